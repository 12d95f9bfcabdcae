//! One department's assignment on a case: its state machine and its clocks.
//! `WHISTLED → ACKNOWLEDGED (报到) → ON_SITE (到场) → RESOLVED (办结)`, or `RETURNED (退回)`.

use super::clock::{ClockKind, ClockState, ClockStep, DeadlineClock};
use super::deadline::DeadlinePolicy;
use super::limits::Limits;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

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

/// A department's request for more time on its resolve clock, and the street's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub extra: Duration,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub decision: Option<Decision>,
}

/// The street's decision on a request (an extension) or a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved (an extension) or upheld (a return).
    pub granted: bool,
    pub at: DateTime<Utc>,
    pub by: String,
    pub note: String,
}

/// Who is whistled: the department, the supervision department of its escalations, its role and
/// the id its assignment gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhistleTarget {
    pub assignment_id: String,
    pub department_code: String,
    pub supervision_department_code: String,
    pub role: Role,
}

/// A deadline an approved extension moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovedDeadline {
    pub previous_due_at: DateTime<Utc>,
    pub new_due_at: DateTime<Utc>,
}

/// A step one of the assignment's clocks fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub kind: ClockKind,
    pub step: ClockStep,
    pub due_at: DateTime<Utc>,
    pub escalate_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
}

/// One department's work on a case. Stored as JSON: fields added later default, so rows written
/// before them still decode (see [`Assignment::upgrade`]); fields at their empty value are left out
/// of the stored form, which keeps a row under half a database page (two assignments to a SQLite
/// page instead of one: fewer pages written per batch of department actions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub assignment_id: String,
    pub case_id: String,
    pub department_code: String,
    pub role: Role,
    pub status: AssignmentStatus,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub flags: BTreeSet<Flag>,
    pub whistled_at: DateTime<Utc>,
    /// The deadlines of the current clocks, as shown (they move with extensions and deferrals).
    pub acknowledge_by: DateTime<Utc>,
    pub on_site_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
    pub requires_on_site: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub responsible_person: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub contact_phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_site_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resolution: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub return_reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suggested_department_code: String,
    pub version: u64,
    /// Who receives this assignment's escalations (督办), fixed when whistled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub supervision_department_code: String,
    /// The limits it was whistled with: clocks restart from them.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// The current clock of each kind (no on-site clock when on-site is not required).
    #[serde(default)]
    pub clocks: Vec<DeadlineClock>,
    /// The latest request for more time on the current resolve clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    /// The street's decision on the latest return; `None` while pending or never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_decision: Option<Decision>,
    /// Returns the street rejected (推诿).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_returns: u32,
}

impl Assignment {
    /// A fresh assignment whistled at `at`, with its clocks started.
    pub fn whistle(
        target: &WhistleTarget,
        case_id: &str,
        at: DateTime<Utc>,
        limits: Limits,
        requires_on_site: bool,
        policy: &dyn DeadlinePolicy,
    ) -> Self {
        let mut assignment = Self {
            assignment_id: target.assignment_id.clone(),
            case_id: case_id.to_string(),
            department_code: target.department_code.clone(),
            role: target.role,
            status: AssignmentStatus::Whistled,
            flags: BTreeSet::new(),
            whistled_at: at,
            acknowledge_by: at,
            on_site_by: at,
            resolve_by: at,
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
            supervision_department_code: target.supervision_department_code.clone(),
            limits: Some(limits),
            clocks: Vec::new(),
            extension: None,
            return_decision: None,
            rejected_returns: 0,
        };
        assignment.start_clocks(at, policy);
        assignment
    }

    /// Starts every clock afresh from `at` with the assignment's limits.
    fn start_clocks(&mut self, at: DateTime<Utc>, policy: &dyn DeadlinePolicy) {
        let limits = self.limits();
        for clock in &mut self.clocks {
            clock.stop(at);
        }
        self.clocks = ClockKind::ALL
            .into_iter()
            .filter(|kind| *kind != ClockKind::OnSite || self.requires_on_site)
            .map(|kind| {
                DeadlineClock::start(
                    kind,
                    at,
                    limits.within(kind),
                    limits.escalate_after(kind),
                    policy,
                )
            })
            .collect();
        // the on-site deadline is shown even when no on-site clock runs
        self.on_site_by = policy.due_at(at, limits.on_site_within);
        self.sync_deadlines();
    }

    /// The limits it was whistled with (for rows stored before they were kept: the limits its
    /// deadlines imply).
    pub fn limits(&self) -> Limits {
        self.limits.unwrap_or_else(|| Limits {
            acknowledge_within: self.acknowledge_by - self.whistled_at,
            on_site_within: self.on_site_by - self.whistled_at,
            resolve_within: self.resolve_by - self.whistled_at,
            acknowledge_escalate_after: None,
            on_site_escalate_after: None,
            resolve_escalate_after: None,
        })
    }

    /// Gives an assignment stored before clocks were kept its clocks, from its deadlines and its
    /// status, so they fire like any other. Does nothing to a current one.
    pub fn upgrade(&mut self) {
        if !self.clocks.is_empty() || self.limits.is_some() {
            return;
        }
        let limits = self.limits();
        let mut clocks = Vec::new();
        for kind in ClockKind::ALL {
            if kind == ClockKind::OnSite && !self.requires_on_site {
                continue;
            }
            let due_at = match kind {
                ClockKind::Acknowledge => self.acknowledge_by,
                ClockKind::OnSite => self.on_site_by,
                ClockKind::Resolve => self.resolve_by,
            };
            let escalate_after = limits.escalate_after(kind).max(Duration::zero());
            let done_at = match kind {
                ClockKind::Acknowledge => self.acknowledged_at,
                ClockKind::OnSite => self.on_site_at,
                ClockKind::Resolve => self.resolved_at,
            };
            let state = match (self.status, done_at) {
                (AssignmentStatus::Returned, _) => ClockState::Stopped {
                    at: self.returned_at.unwrap_or(self.whistled_at),
                },
                (_, Some(at)) => ClockState::Met { at },
                (status, None) if status.is_open() => ClockState::Running,
                (_, None) => ClockState::Stopped {
                    at: self.whistled_at,
                },
            };
            clocks.push(DeadlineClock {
                kind,
                started_at: self.whistled_at,
                due_at,
                escalate_after,
                escalate_at: due_at + escalate_after,
                state,
                overdue_at: None,
                escalated_at: None,
                extension_requested: false,
                counts_working_time: false,
            });
        }
        self.clocks = clocks;
        self.limits = Some(limits);
    }

    pub fn clock(&self, kind: ClockKind) -> Option<&DeadlineClock> {
        self.clocks.iter().find(|clock| clock.kind == kind)
    }

    fn clock_mut(&mut self, kind: ClockKind) -> Option<&mut DeadlineClock> {
        self.clocks.iter_mut().find(|clock| clock.kind == kind)
    }

    /// The shown deadlines follow the clocks.
    fn sync_deadlines(&mut self) {
        for clock in &self.clocks {
            match clock.kind {
                ClockKind::Acknowledge => self.acknowledge_by = clock.due_at,
                ClockKind::OnSite => self.on_site_by = clock.due_at,
                ClockKind::Resolve => self.resolve_by = clock.due_at,
            }
        }
    }

    /// A clock runs past its deadline now.
    pub fn is_overdue(&self) -> bool {
        self.clocks.iter().any(DeadlineClock::is_overdue)
    }

    /// The next step of each clock that has one, and when it is due.
    pub fn pending_steps(&self) -> Vec<(ClockKind, ClockStep, DateTime<Utc>)> {
        self.clocks
            .iter()
            .filter_map(|clock| clock.next_step().map(|(step, due)| (clock.kind, step, due)))
            .collect()
    }

    /// Why `action` cannot be done now. `hint` says what would allow it; once the assignment is
    /// resolved or returned no department action would, so the hint says what happens instead.
    fn refuse(&self, action: &'static str, hint: &'static str) -> TransitionError {
        let hint = match self.status {
            AssignmentStatus::Resolved => {
                "it is resolved; the community's verification (核查) decides what follows"
            }
            AssignmentStatus::Returned => {
                "it was returned (退回); the street decides whether the return stands"
            }
            _ => hint,
        };
        TransitionError {
            action,
            current: self.status.as_str(),
            hint,
        }
    }

    fn meet(&mut self, kind: ClockKind, at: DateTime<Utc>) {
        if let Some(clock) = self.clock_mut(kind) {
            clock.meet(at);
        }
    }

    /// Whether `at` is within the deadline of the clock `kind` (true when it has none).
    fn within(&self, kind: ClockKind, at: DateTime<Utc>, fallback: DateTime<Utc>) -> bool {
        at <= self.clock(kind).map_or(fallback, |clock| clock.due_at)
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
        let within_limit = self.within(ClockKind::Acknowledge, at, self.acknowledge_by);
        self.status = AssignmentStatus::Acknowledged;
        self.acknowledged_at = Some(at);
        self.responsible_person = responsible_person;
        self.contact_phone = contact_phone;
        self.promised_at = promised_at;
        self.meet(ClockKind::Acknowledge, at);
        self.version += 1;
        Ok(within_limit)
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
            let hint = if self.status == AssignmentStatus::OnSite {
                "it is checked in already"
            } else {
                "acknowledge first"
            };
            return Err(CheckInError::Transition(self.refuse("check in", hint)));
        }
        if distance_meters > radius_meters {
            return Err(CheckInError::TooFar {
                distance_meters,
                radius_meters,
            });
        }
        let within_limit = self.within(ClockKind::OnSite, at, self.on_site_by);
        self.status = AssignmentStatus::OnSite;
        self.on_site_at = Some(at);
        self.meet(ClockKind::OnSite, at);
        self.version += 1;
        Ok(within_limit)
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
        let within_limit = self.within(ClockKind::Resolve, at, self.resolve_by);
        self.status = AssignmentStatus::Resolved;
        self.resolved_at = Some(at);
        self.resolution = resolution;
        self.evidence = evidence;
        for kind in ClockKind::ALL {
            self.meet(kind, at);
        }
        self.version += 1;
        Ok(within_limit)
    }

    /// 退回: the department says it is not responsible. Every clock stops; the street decides.
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
        self.return_decision = None;
        for clock in &mut self.clocks {
            clock.stop(at);
        }
        self.version += 1;
        Ok(())
    }

    /// Whether a return awaits the street's decision.
    pub fn return_pending(&self) -> bool {
        self.status == AssignmentStatus::Returned && self.return_decision.is_none()
    }

    /// The street upholds the return: the department was not responsible.
    pub fn uphold_return(
        &mut self,
        at: DateTime<Utc>,
        by: &str,
        note: &str,
    ) -> Result<(), TransitionError> {
        self.check_return_pending()?;
        self.return_decision = Some(Decision {
            granted: true,
            at,
            by: by.to_string(),
            note: note.to_string(),
        });
        self.version += 1;
        Ok(())
    }

    /// The street rejects the return (推诿): the department takes the case back, WHISTLED again
    /// with fresh clocks from `at`, and must acknowledge anew.
    pub fn take_back(
        &mut self,
        at: DateTime<Utc>,
        by: &str,
        note: &str,
        policy: &dyn DeadlinePolicy,
    ) -> Result<(), TransitionError> {
        self.check_return_pending()?;
        self.return_decision = Some(Decision {
            granted: false,
            at,
            by: by.to_string(),
            note: note.to_string(),
        });
        self.rejected_returns = self.rejected_returns.saturating_add(1);
        self.status = AssignmentStatus::Whistled;
        self.acknowledged_at = None;
        self.responsible_person.clear();
        self.contact_phone.clear();
        self.promised_at = None;
        self.on_site_at = None;
        self.extension = None;
        self.start_clocks(at, policy);
        self.version += 1;
        Ok(())
    }

    fn check_return_pending(&self) -> Result<(), TransitionError> {
        if self.status != AssignmentStatus::Returned {
            return Err(self.refuse("decide the return", "the assignment is not returned"));
        }
        if self.return_decision.is_some() {
            return Err(self.refuse("decide the return", "it was decided already"));
        }
        Ok(())
    }

    /// 延期: asks for `extra` on the running resolve clock, once per clock.
    pub fn request_extension(
        &mut self,
        at: DateTime<Utc>,
        extra: Duration,
        reason: String,
    ) -> Result<DateTime<Utc>, TransitionError> {
        if !self.status.is_open() {
            return Err(self.refuse("request an extension", "the resolve clock has stopped"));
        }
        let running = self
            .clock(ClockKind::Resolve)
            .is_some_and(DeadlineClock::is_running);
        if !running {
            return Err(self.refuse("request an extension", "the resolve clock is not running"));
        }
        if self
            .clock(ClockKind::Resolve)
            .is_some_and(|clock| clock.extension_requested)
        {
            return Err(self.refuse(
                "request an extension",
                "one request per clock, and this clock had one",
            ));
        }
        let Some(clock) = self.clock_mut(ClockKind::Resolve) else {
            return Err(self.refuse("request an extension", "the resolve clock is not running"));
        };
        clock.extension_requested = true;
        let current_due = clock.due_at;
        self.extension = Some(Extension {
            extra,
            reason,
            requested_at: at,
            decision: None,
        });
        self.version += 1;
        Ok(current_due)
    }

    /// The street decides a pending extension. Approved: the resolve clock is replaced by one whose
    /// deadline is the old one plus the extra time (the old deadline never fires) and the
    /// assignment is flagged EXTENDED; returns the old and the new deadline.
    pub fn decide_extension(
        &mut self,
        at: DateTime<Utc>,
        approved: bool,
        by: &str,
        note: &str,
        policy: &dyn DeadlinePolicy,
    ) -> Result<Option<MovedDeadline>, TransitionError> {
        let pending = self
            .extension
            .as_ref()
            .is_some_and(|extension| extension.decision.is_none());
        if !pending {
            return Err(self.refuse(
                "decide the extension",
                "no request for more time is pending",
            ));
        }
        let running = self
            .clock(ClockKind::Resolve)
            .is_some_and(DeadlineClock::is_running);
        if !running {
            return Err(self.refuse(
                "decide the extension",
                "the resolve clock is no longer running",
            ));
        }
        let extra = self
            .extension
            .as_ref()
            .map_or(Duration::zero(), |e| e.extra);
        if let Some(extension) = &mut self.extension {
            extension.decision = Some(Decision {
                granted: approved,
                at,
                by: by.to_string(),
                note: note.to_string(),
            });
        }
        let mut moved = None;
        if approved && let Some(clock) = self.clock_mut(ClockKind::Resolve) {
            let previous_due = clock.due_at;
            let mut extended = DeadlineClock::start(
                ClockKind::Resolve,
                at,
                Duration::zero(),
                clock.escalate_after,
                policy,
            );
            extended.due_at = policy.due_at(previous_due, extra);
            extended.escalate_at = policy.due_at(extended.due_at, extended.escalate_after);
            // the extended clock is the one the department asked about: no second request
            extended.extension_requested = true;
            clock.stop(at);
            *clock = extended;
            moved = Some(MovedDeadline {
                previous_due_at: previous_due,
                new_due_at: clock.due_at,
            });
            self.flags.insert(Flag::Extended);
            self.sync_deadlines();
        }
        self.version += 1;
        Ok(moved)
    }

    /// Verification failed (返工): a resolved assignment goes back to work with a fresh resolve
    /// clock of its resolve limit. Returns whether it was reopened.
    pub fn reopen(&mut self, at: DateTime<Utc>, policy: &dyn DeadlinePolicy) -> bool {
        if self.status != AssignmentStatus::Resolved {
            return false;
        }
        self.status = if self.on_site_at.is_some() {
            AssignmentStatus::OnSite
        } else {
            AssignmentStatus::Acknowledged
        };
        self.resolved_at = None;
        let limits = self.limits();
        let fresh = DeadlineClock::start(
            ClockKind::Resolve,
            at,
            limits.resolve_within,
            limits.escalate_after(ClockKind::Resolve),
            policy,
        );
        match self.clock_mut(ClockKind::Resolve) {
            Some(clock) => *clock = fresh,
            None => self.clocks.push(fresh),
        }
        self.extension = None;
        self.sync_deadlines();
        self.version += 1;
        true
    }

    /// 缓办: every running clock stops with the time it has left. Returns whether it changed.
    pub fn pause(&mut self, at: DateTime<Utc>, policy: &dyn DeadlinePolicy) -> bool {
        if !self.status.is_open() {
            return false;
        }
        for clock in &mut self.clocks {
            clock.pause(at, policy);
        }
        self.flags.insert(Flag::Deferred);
        self.version += 1;
        true
    }

    /// The deferral ended: every paused clock continues with the time it had left. Returns
    /// whether it changed.
    pub fn resume(&mut self, at: DateTime<Utc>, policy: &dyn DeadlinePolicy) -> bool {
        let paused = self
            .clocks
            .iter()
            .any(|clock| matches!(clock.state, ClockState::Paused { .. }));
        if !paused {
            return false;
        }
        for clock in &mut self.clocks {
            clock.resume(at, policy);
        }
        self.sync_deadlines();
        self.version += 1;
        true
    }

    /// Fires the next due step of one clock at `now`, if any: the overdue step raises the clock's
    /// overdue flag, the escalation step ESCALATED.
    pub fn fire(&mut self, kind: ClockKind, now: DateTime<Utc>) -> Option<Firing> {
        if !self.status.is_open() {
            return None;
        }
        let clock = self.clock_mut(kind)?;
        let step = clock.fire(now)?;
        let firing = Firing {
            kind,
            step,
            due_at: clock.due_at,
            escalate_at: clock.escalate_at,
            fired_at: now,
        };
        self.flags.insert(match step {
            ClockStep::Overdue => kind.overdue_flag(),
            ClockStep::Escalation => Flag::Escalated,
        });
        self.version += 1;
        Some(firing)
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

/// For `skip_serializing_if`: a count of zero is left out of the stored form.
fn is_zero(count: &u32) -> bool {
    *count == 0
}
