//! Dispatch's use cases. Each loads a case with its assignments, applies the domain rules, and saves
//! the new state, its timeline and its events (through the outbox) in the caller's transaction.

use crate::convert::{assignment_to_proto, severity_from_proto};
use crate::domain::{
    self, Assignment, CaseStatus, CheckInError, Evidence, LimitOverrides, Role, Route, Severity,
};
use crate::error::DispatchError;
use crate::storage::{action, assignment, case, route, timeline};
use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::QuerySelect;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder,
};
use std::collections::HashMap;
use whistle_platform::clock::{Clock, from_millis, to_millis};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::outbox;
use whistle_proto::events::{
    AssignmentAcknowledged, AssignmentCheckedIn, AssignmentProgressed, AssignmentResolved,
    AssignmentReturned, CaseAccepted, CaseClosed, CaseRejected, CaseReopened, CaseReported,
    CaseVerified, WhistleIssued,
};
use whistle_proto::types::Region;

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-dispatch";

/// A case loaded for change: its row, its assignments, and what the change adds.
#[derive(Debug)]
pub struct CaseState {
    pub model: case::Model,
    pub assignments: Vec<Assignment>,
    original_version: Option<i64>,
    original_assignment_versions: HashMap<String, u64>,
    events: Vec<Event>,
    timeline: Vec<timeline::ActiveModel>,
}

impl CaseState {
    /// A read-only view of a stored case.
    pub fn view(model: case::Model, assignments: Vec<Assignment>) -> Self {
        Self {
            original_version: Some(model.version),
            original_assignment_versions: assignments
                .iter()
                .map(|a| (a.assignment_id.clone(), a.version))
                .collect(),
            model,
            assignments,
            events: Vec::new(),
            timeline: Vec::new(),
        }
    }

    pub fn status(&self) -> CaseStatus {
        CaseStatus::parse(&self.model.status).unwrap_or(CaseStatus::Reported)
    }

    fn set_status(&mut self, status: CaseStatus) {
        self.model.status = status.as_str().to_string();
    }

    pub fn region(&self) -> Region {
        Region {
            city_code: self.model.city_code.clone(),
            district_code: self.model.district_code.clone(),
            street_code: self.model.street_code.clone(),
            street_slug: self.model.street_slug.clone(),
            community_code: self.model.community_code.clone(),
            grid_code: self.model.grid_code.clone(),
        }
    }

    fn severity(&self) -> Severity {
        severity_from_proto(self.model.severity).unwrap_or(Severity::Routine)
    }

    fn reported(&self) -> CaseReported {
        CaseReported::decode(self.model.reported.as_slice()).unwrap_or_default()
    }

    /// Records one fact: bumps the case version, adds the event and its timeline entry.
    fn emit(
        &mut self,
        clock: &dyn Clock,
        payload: Payload,
        actor: &str,
        assignment_id: &str,
        detail: String,
    ) {
        self.model.version += 1;
        let kind = envelope::kind(&payload).label();
        let event = envelope::new_event(
            clock,
            SOURCE,
            &self.model.case_id,
            self.model.version as u64,
            Some(self.region()),
            payload,
        );
        self.note(clock.now(), &kind, actor, assignment_id, detail);
        self.events.push(event);
    }

    fn note(
        &mut self,
        at: DateTime<Utc>,
        kind: &str,
        actor: &str,
        assignment_id: &str,
        detail: String,
    ) {
        self.timeline.push(timeline::ActiveModel {
            case_id: Set(self.model.case_id.clone()),
            at_ms: Set(to_millis(at)),
            kind: Set(kind.to_string()),
            actor: Set(actor.to_string()),
            assignment_id: Set(assignment_id.to_string()),
            detail: Set(detail),
            ..Default::default()
        });
    }
}

/// Loads a case and its assignments, to read.
pub async fn load_case<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<Option<CaseState>, DispatchError> {
    load(connection, case_id, false).await
}

/// Loads a case and its assignments to change them inside the caller's transaction. On
/// PostgreSQL the case row is locked (`FOR UPDATE`) until the transaction ends, so concurrent
/// changes of one case (several departments acting at once) queue instead of failing the version
/// check of [`save_case`]; SQLite has a single writer and needs no lock.
pub async fn load_case_for_change<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<Option<CaseState>, DispatchError> {
    load(connection, case_id, true).await
}

async fn load<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
    for_change: bool,
) -> Result<Option<CaseState>, DispatchError> {
    let mut query = case::Entity::find_by_id(case_id);
    if for_change {
        // sea-query writes no lock clause for SQLite
        query = query.lock_exclusive();
    }
    let Some(model) = query.one(connection).await? else {
        return Ok(None);
    };
    let rows = assignment::Entity::find()
        .filter(assignment::Column::CaseId.eq(case_id))
        .order_by_asc(assignment::Column::WhistledAtMs)
        .order_by_asc(assignment::Column::AssignmentId)
        .all(connection)
        .await?;
    let assignments = rows
        .iter()
        .map(|row| {
            serde_json::from_str::<Assignment>(&row.state).map_err(DispatchError::unexpected)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CaseState::view(model, assignments)))
}

/// Saves a changed case: version-checked, so a concurrent change makes this one fail with Conflict.
pub async fn save_case<C: ConnectionTrait>(
    connection: &C,
    clock: &dyn Clock,
    mut state: CaseState,
) -> Result<(), DispatchError> {
    let now_ms = to_millis(clock.now());
    state.model.updated_at_ms = now_ms;
    match state.original_version {
        None => {
            case::Entity::insert(state.model.clone().into_active_model())
                .exec_without_returning(connection)
                .await?;
        }
        Some(original) if original != state.model.version => {
            let active = state.model.clone().into_active_model().reset_all();
            let updated = case::Entity::update_many()
                .set(active)
                .filter(case::Column::CaseId.eq(state.model.case_id.as_str()))
                .filter(case::Column::Version.eq(original))
                .exec(connection)
                .await?;
            if updated.rows_affected != 1 {
                return Err(DispatchError::Conflict(format!(
                    "case {}",
                    state.model.case_id
                )));
            }
        }
        Some(_) => {}
    }
    for assignment in &state.assignments {
        let original = state
            .original_assignment_versions
            .get(&assignment.assignment_id)
            .copied();
        if original == Some(assignment.version) {
            continue;
        }
        let row = assignment::Model {
            assignment_id: assignment.assignment_id.clone(),
            case_id: assignment.case_id.clone(),
            department_code: assignment.department_code.clone(),
            status: assignment.status.as_str().to_string(),
            version: assignment.version as i64,
            whistled_at_ms: to_millis(assignment.whistled_at),
            acknowledge_by_ms: to_millis(assignment.acknowledge_by),
            on_site_by_ms: to_millis(assignment.on_site_by),
            resolve_by_ms: to_millis(assignment.resolve_by),
            state: serde_json::to_string(assignment).map_err(DispatchError::unexpected)?,
        };
        match original {
            None => {
                assignment::Entity::insert(row.into_active_model())
                    .exec_without_returning(connection)
                    .await?;
            }
            Some(original) => {
                let active = row.into_active_model().reset_all();
                let updated = assignment::Entity::update_many()
                    .set(active)
                    .filter(assignment::Column::AssignmentId.eq(assignment.assignment_id.as_str()))
                    .filter(assignment::Column::Version.eq(original as i64))
                    .exec(connection)
                    .await?;
                if updated.rows_affected != 1 {
                    return Err(DispatchError::Conflict(format!(
                        "assignment {}",
                        assignment.assignment_id
                    )));
                }
            }
        }
    }
    if !state.timeline.is_empty() {
        timeline::Entity::insert_many(std::mem::take(&mut state.timeline))
            .exec_without_returning(connection)
            .await?;
    }
    for event in &state.events {
        let outbox_event = envelope::to_outbox(event).map_err(DispatchError::unexpected)?;
        outbox::enqueue(connection, outbox_event, now_ms).await?;
    }
    Ok(())
}

/// Applies `case.reported`: opens the case, routes it, and whistles at once when the route says so.
/// Returns false when the case already existed (a replay).
pub async fn open_reported_case<C: ConnectionTrait>(
    connection: &C,
    clock: &dyn Clock,
    event: &Event,
    reported: &CaseReported,
) -> Result<bool, DispatchError> {
    if case::Entity::find_by_id(event.case_id.as_str())
        .one(connection)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let mut state = CaseState::open(clock, event, reported);
    let routes = routes_for_category(connection, &state.model.category_code).await?;
    match domain::select_route(&routes, &state.model.category_code, &state.model.grid_code) {
        Some(route) => apply_route(clock, &mut state, route)?,
        None => {
            tracing::info!(case_id = %state.model.case_id, category = %state.model.category_code, "no route matches, waiting for the street");
        }
    }
    save_case(connection, clock, state).await?;
    Ok(true)
}

impl CaseState {
    /// A new case opened from intake's `case.reported`, not saved yet.
    pub fn open(clock: &dyn Clock, event: &Event, reported: &CaseReported) -> Self {
        let region = event.region.clone().unwrap_or_default();
        let place = reported.place.clone().unwrap_or_default();
        let reported_at = event
            .occurred_at
            .as_ref()
            .and_then(whistle_platform::clock::from_proto_timestamp)
            .unwrap_or_else(|| clock.now());
        let mut state = CaseState {
            model: case::Model {
                case_id: event.case_id.clone(),
                status: CaseStatus::Reported.as_str().to_string(),
                version: event.case_version.max(1) as i64,
                city_code: region.city_code,
                district_code: region.district_code,
                street_code: region.street_code,
                street_slug: region.street_slug,
                community_code: region.community_code,
                grid_code: region.grid_code,
                category_code: reported.category_code.clone(),
                severity: reported.severity,
                channel: reported.channel,
                report_id: reported.report_id.clone(),
                description: reported.description.clone(),
                lat: place.lat,
                lng: place.lng,
                address: place.address,
                reported: reported.encode_to_vec(),
                reported_at_ms: to_millis(reported_at),
                reject_reason: String::new(),
                route_id: String::new(),
                updated_at_ms: to_millis(clock.now()),
            },
            assignments: Vec::new(),
            original_version: None,
            original_assignment_versions: HashMap::new(),
            events: Vec::new(),
            timeline: Vec::new(),
        };
        state.note(
            reported_at,
            "case.reported",
            &reported.reporter_id,
            "",
            reported.description.clone(),
        );
        state
    }

    /// The events this change adds, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// Records the route that matched a new case; accepts and whistles when it says so.
fn apply_route(
    clock: &dyn Clock,
    state: &mut CaseState,
    route: &Route,
) -> Result<(), DispatchError> {
    state.model.route_id = route.route_id.clone();
    if route.auto_whistle {
        let by = format!("route:{}", route.route_id);
        accept(clock, state, &by)?;
        whistle(
            clock,
            state,
            &by,
            &route.lead_department_code,
            &route.co_department_codes,
            &route.limits,
            route.requires_on_site,
        )?;
    }
    Ok(())
}

/// Routes of one category, parsed.
pub async fn routes_for_category<C: ConnectionTrait>(
    connection: &C,
    category_code: &str,
) -> Result<Vec<Route>, DispatchError> {
    route::Entity::find()
        .filter(route::Column::CategoryCode.eq(category_code))
        .all(connection)
        .await?
        .iter()
        .map(|row| {
            serde_json::from_str::<Route>(&row.definition).map_err(DispatchError::unexpected)
        })
        .collect()
}

/// 立案.
pub fn accept(clock: &dyn Clock, state: &mut CaseState, by: &str) -> Result<(), DispatchError> {
    if state.status() != CaseStatus::Reported {
        return Err(DispatchError::FailedPrecondition(format!(
            "cannot accept: current status is {}",
            state.status().as_str()
        )));
    }
    state.set_status(CaseStatus::Accepted);
    state.emit(
        clock,
        Payload::CaseAccepted(CaseAccepted {
            accepted_by: by.to_string(),
        }),
        by,
        "",
        "立案".into(),
    );
    Ok(())
}

/// 不予立案.
pub fn reject(
    clock: &dyn Clock,
    state: &mut CaseState,
    by: &str,
    reason: &str,
) -> Result<(), DispatchError> {
    if !matches!(state.status(), CaseStatus::Reported | CaseStatus::Accepted) {
        return Err(DispatchError::FailedPrecondition(format!(
            "cannot reject: current status is {}",
            state.status().as_str()
        )));
    }
    state.set_status(CaseStatus::Rejected);
    state.model.reject_reason = reason.to_string();
    state.emit(
        clock,
        Payload::CaseRejected(CaseRejected {
            rejected_by: by.to_string(),
            reason: reason.to_string(),
        }),
        by,
        "",
        reason.to_string(),
    );
    Ok(())
}

/// 吹哨: one assignment per department not already working on the case.
pub fn whistle(
    clock: &dyn Clock,
    state: &mut CaseState,
    by: &str,
    lead_department_code: &str,
    co_department_codes: &[String],
    limits: &LimitOverrides,
    requires_on_site: bool,
) -> Result<Vec<String>, DispatchError> {
    if !domain::may_whistle(state.status()) {
        return Err(DispatchError::FailedPrecondition(format!(
            "cannot whistle: current status is {}",
            state.status().as_str()
        )));
    }
    if state.status() == CaseStatus::Reported {
        accept(clock, state, by)?;
    }
    let now = clock.now();
    let limits = limits.apply(state.severity().default_limits());
    let departments: Vec<(&str, Role)> = std::iter::once((lead_department_code, Role::Lead))
        .chain(
            co_department_codes
                .iter()
                .map(|code| (code.as_str(), Role::Co)),
        )
        .collect();
    let mut issued = Vec::new();
    for (department, role) in &departments {
        let already_working = state
            .assignments
            .iter()
            .any(|existing| existing.department_code == *department && existing.status.is_open());
        if already_working {
            continue;
        }
        issued.push(Assignment::whistle(
            uuid::Uuid::now_v7().to_string(),
            state.model.case_id.clone(),
            department.to_string(),
            *role,
            now,
            limits,
            requires_on_site,
        ));
    }
    if issued.is_empty() {
        return Err(DispatchError::FailedPrecondition(
            "cannot whistle: every named department already has an open assignment on this case"
                .into(),
        ));
    }
    let reported = state.reported();
    let all_codes: Vec<String> = departments
        .iter()
        .map(|(code, _)| code.to_string())
        .collect();
    let mut ids = Vec::new();
    for assignment in issued {
        let co_department_codes = all_codes
            .iter()
            .filter(|code| **code != assignment.department_code)
            .cloned()
            .collect();
        let payload = Payload::WhistleIssued(WhistleIssued {
            assignment: Some(assignment_to_proto(&assignment)),
            category_code: state.model.category_code.clone(),
            severity: state.model.severity,
            description: state.model.description.clone(),
            place: reported.place.clone(),
            attachments: reported.attachments.clone(),
            co_department_codes,
            whistled_by: by.to_string(),
        });
        let detail = format!("{} ({:?})", assignment.department_code, assignment.role);
        let assignment_id = assignment.assignment_id.clone();
        state.assignments.push(assignment);
        state.emit(clock, payload, by, &assignment_id, detail);
        ids.push(assignment_id);
    }
    state.set_status(CaseStatus::Whistled);
    Ok(ids)
}

/// 核查: passed closes the case; failed reopens the resolved assignments (返工).
pub fn verify(
    clock: &dyn Clock,
    state: &mut CaseState,
    verifier: &str,
    passed: bool,
    note: &str,
) -> Result<(), DispatchError> {
    if state.status() != CaseStatus::AwaitingVerification {
        return Err(DispatchError::FailedPrecondition(format!(
            "cannot verify: current status is {}",
            state.status().as_str()
        )));
    }
    state.emit(
        clock,
        Payload::CaseVerified(CaseVerified {
            verified_by: verifier.to_string(),
            passed,
            note: note.to_string(),
        }),
        verifier,
        "",
        if passed {
            "核查通过".into()
        } else {
            format!("核查未通过: {note}")
        },
    );
    if passed {
        state.set_status(CaseStatus::Closed);
        state.emit(
            clock,
            Payload::CaseClosed(CaseClosed {}),
            verifier,
            "",
            "结案".into(),
        );
        return Ok(());
    }
    let now = clock.now();
    let resolve_within = state.severity().default_limits().resolve_within;
    let mut reopened = Vec::new();
    for assignment in &mut state.assignments {
        if assignment.reopen(now, resolve_within) {
            reopened.push(assignment.assignment_id.clone());
        }
    }
    state.set_status(CaseStatus::Reopened);
    state.emit(
        clock,
        Payload::CaseReopened(CaseReopened {
            reason: note.to_string(),
            assignment_ids: reopened,
        }),
        verifier,
        "",
        "返工".into(),
    );
    Ok(())
}

/// 自办: the community solved it before any department was needed.
pub fn resolve_locally(
    clock: &dyn Clock,
    state: &mut CaseState,
    by: &str,
    resolution: &str,
) -> Result<(), DispatchError> {
    if !matches!(state.status(), CaseStatus::Reported | CaseStatus::Accepted) {
        return Err(DispatchError::FailedPrecondition(format!(
            "cannot resolve locally: current status is {}",
            state.status().as_str()
        )));
    }
    state.set_status(CaseStatus::AwaitingVerification);
    state.model.version += 1;
    state.note(
        clock.now(),
        "case.resolved_locally",
        by,
        "",
        resolution.to_string(),
    );
    Ok(())
}

/// What a department does to its assignment, already validated.
#[derive(Debug, Clone)]
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
}

impl DepartmentAction {
    fn name(&self) -> &'static str {
        match self {
            DepartmentAction::Acknowledge { .. } => "acknowledge",
            DepartmentAction::CheckIn { .. } => "check_in",
            DepartmentAction::Progress { .. } => "progress",
            DepartmentAction::Resolve { .. } => "resolve",
            DepartmentAction::Return { .. } => "return",
        }
    }
}

/// The assignment after a department action, and whether the action had been recorded before.
#[derive(Debug, Clone)]
pub struct RecordedAction {
    pub assignment: Assignment,
    /// The department used this `action_id` before: nothing changed this time.
    pub repeated: bool,
}

/// The rules of department actions that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct ActionRules {
    /// How far from the case's place a check-in may be.
    pub check_in_radius_meters: f64,
    /// Evidence items one assignment keeps over all its actions (`limits.evidence_per_assignment`).
    pub evidence_per_assignment: usize,
}

/// Applies a department's action to its assignment; idempotent on (department, `action_id`): each
/// department has its own ids, and nothing in an answer tells of another department's actions.
pub async fn record_department_action<C: ConnectionTrait>(
    connection: &C,
    clock: &dyn Clock,
    rules: ActionRules,
    action_id: &str,
    assignment_id: &str,
    department_code: &str,
    department_action: DepartmentAction,
) -> Result<RecordedAction, DispatchError> {
    let row = assignment::Entity::find_by_id(assignment_id)
        .one(connection)
        .await?
        .ok_or_else(|| DispatchError::NotFound(format!("assignment {assignment_id} not found")))?;
    if row.department_code != department_code {
        return Err(DispatchError::PermissionDenied(format!(
            "assignment {assignment_id} is not addressed to department {department_code}"
        )));
    }
    // the case is locked before the action id is looked up, so a retry racing its first attempt
    // waits for it, finds its record and answers as a repeat
    let mut state = load_case_for_change(connection, &row.case_id)
        .await?
        .ok_or_else(|| {
            DispatchError::unexpected(format!("assignment {assignment_id} has no case"))
        })?;
    if let Some(done) =
        action::Entity::find_by_id((department_code.to_string(), action_id.to_string()))
            .one(connection)
            .await?
    {
        // the department's own earlier action: naming it tells nothing new
        if done.assignment_id != assignment_id || done.kind != department_action.name() {
            return Err(DispatchError::invalid(
                "action_id",
                format!(
                    "already used for {} on assignment {}",
                    done.kind, done.assignment_id
                ),
            ));
        }
        let assignment = state
            .assignments
            .iter()
            .find(|assignment| assignment.assignment_id == assignment_id)
            .cloned()
            .ok_or_else(|| DispatchError::unexpected("assignment missing from its case"))?;
        return Ok(RecordedAction {
            assignment,
            repeated: true,
        });
    }
    let assignment = apply_department_action(
        clock,
        rules,
        &mut state,
        assignment_id,
        department_code,
        &department_action,
    )?;
    action::Entity::insert(action::ActiveModel {
        department_code: Set(department_code.to_string()),
        action_id: Set(action_id.to_string()),
        assignment_id: Set(assignment_id.to_string()),
        kind: Set(department_action.name().to_string()),
        at_ms: Set(to_millis(clock.now())),
    })
    .exec_without_returning(connection)
    .await?;
    save_case(connection, clock, state).await?;
    Ok(RecordedAction {
        assignment,
        repeated: false,
    })
}

/// The rules of a department action on a loaded case: changes the assignment, adds its event and
/// timeline entry, moves the case on when every assignment is done. Returns the assignment.
pub fn apply_department_action(
    clock: &dyn Clock,
    rules: ActionRules,
    state: &mut CaseState,
    assignment_id: &str,
    department_code: &str,
    department_action: &DepartmentAction,
) -> Result<Assignment, DispatchError> {
    let index = state
        .assignments
        .iter()
        .position(|assignment| assignment.assignment_id == assignment_id)
        .ok_or_else(|| DispatchError::unexpected("assignment missing from its case"))?;
    let now = clock.now();
    let (case_lat, case_lng) = (state.model.lat, state.model.lng);
    let assignment = &mut state.assignments[index];
    let (payload, detail) = match department_action {
        DepartmentAction::Acknowledge {
            responsible_person,
            contact_phone,
            promised_at,
        } => {
            let within_limit = assignment.acknowledge(
                now,
                responsible_person.clone(),
                contact_phone.clone(),
                *promised_at,
            )?;
            (
                Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                    assignment: Some(assignment_to_proto(assignment)),
                    within_limit,
                }),
                format!("报到: {responsible_person}"),
            )
        }
        DepartmentAction::CheckIn { lat, lng, person } => {
            let distance = domain::distance_meters(*lat, *lng, case_lat, case_lng);
            let within_limit = assignment.check_in(now, distance, rules.check_in_radius_meters).map_err(|error| match error {
                CheckInError::Transition(error) => DispatchError::from(error),
                CheckInError::TooFar { distance_meters, radius_meters } => DispatchError::FailedPrecondition(format!(
                    "cannot check in: {distance_meters:.0} m from the case's place, more than {radius_meters:.0} m"
                )),
            })?;
            (
                Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                    assignment: Some(assignment_to_proto(assignment)),
                    within_limit,
                    distance_meters: distance,
                }),
                format!("到场: {person} ({distance:.0} m)"),
            )
        }
        DepartmentAction::Progress { note, evidence } => {
            assignment.progress(evidence.clone(), rules.evidence_per_assignment)?;
            (
                Payload::AssignmentProgressed(AssignmentProgressed {
                    assignment: Some(assignment_to_proto(assignment)),
                    note: note.clone(),
                }),
                note.clone(),
            )
        }
        DepartmentAction::Resolve {
            resolution,
            evidence,
        } => {
            if evidence.len() > rules.evidence_per_assignment {
                return Err(domain::ProgressError::TooMuchEvidence {
                    kept: 0,
                    adding: evidence.len(),
                    max_evidence: rules.evidence_per_assignment,
                }
                .into());
            }
            let within_limit = assignment.resolve(now, resolution.clone(), evidence.clone())?;
            (
                Payload::AssignmentResolved(AssignmentResolved {
                    assignment: Some(assignment_to_proto(assignment)),
                    within_limit,
                }),
                format!("办结: {resolution}"),
            )
        }
        DepartmentAction::Return {
            reason,
            suggested_department_code,
        } => {
            assignment.return_to_street(now, reason.clone(), suggested_department_code.clone())?;
            (
                Payload::AssignmentReturned(AssignmentReturned {
                    assignment: Some(assignment_to_proto(assignment)),
                }),
                format!("退回: {reason}"),
            )
        }
    };
    let result = assignment.clone();
    state.emit(clock, payload, department_code, assignment_id, detail);
    let next = domain::case_status_after(state.status(), &state.assignments);
    if next != state.status() {
        state.set_status(next);
    }
    Ok(result)
}

/// Runs a use case (its own transaction: load, apply, save) and runs it again from the start when
/// it fails with [`DispatchError::Conflict`], at most `retries` more times, after a short jittered
/// pause that doubles each time (≈5 ms, 10 ms, … up to 200 ms), so callers acting on one case at
/// once see ABORTED only for a conflict that persists.
pub async fn retry_on_conflict<T, F, Fut>(retries: u32, mut use_case: F) -> Result<T, DispatchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DispatchError>>,
{
    let mut retried = 0;
    loop {
        match use_case().await {
            Err(DispatchError::Conflict(what)) if retried < retries => {
                retried += 1;
                let ceiling_ms = (5u64 << (retried - 1).min(6)).min(200);
                let pause = std::time::Duration::from_micros(fastrand::u64(
                    ceiling_ms * 500..=ceiling_ms * 1000,
                ));
                tracing::debug!(%what, retried, pause_ms = pause.as_millis() as u64, "concurrent change, retrying");
                tokio::time::sleep(pause).await;
            }
            Err(DispatchError::Conflict(what)) => {
                tracing::warn!(%what, retried, "concurrent change persists, giving up");
                return Err(DispatchError::Conflict(what));
            }
            outcome => return outcome,
        }
    }
}

/// The timeline of a case, oldest first.
pub async fn timeline_of<C: ConnectionTrait>(
    connection: &C,
    case_id: &str,
) -> Result<Vec<timeline::Model>, DispatchError> {
    Ok(timeline::Entity::find()
        .filter(timeline::Column::CaseId.eq(case_id))
        .order_by_asc(timeline::Column::Id)
        .all(connection)
        .await?)
}

/// Milliseconds to a time; re-exported for the gRPC layer.
pub fn time_of(millis: i64) -> DateTime<Utc> {
    from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn conflicts_are_retried_until_they_clear_and_reported_when_they_persist() {
        let attempts = AtomicU32::new(0);
        let outcome = retry_on_conflict(5, || {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 3 {
                    Err(DispatchError::Conflict("case c1".into()))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(outcome.expect("cleared on the fourth run"), 3);

        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_on_conflict(2, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(DispatchError::Conflict("case c1".into())) }
        })
        .await;
        assert!(matches!(outcome, Err(DispatchError::Conflict(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "once and two retries");

        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_on_conflict(5, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(DispatchError::FailedPrecondition("no".into())) }
        })
        .await;
        assert!(matches!(outcome, Err(DispatchError::FailedPrecondition(_))));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "only conflicts are retried"
        );
    }
}
