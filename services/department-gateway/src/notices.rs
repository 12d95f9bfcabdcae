//! Consuming the events: each event addressed to a department is appended to that department's
//! notice log (and updates its assignments projection), in the inbox's transaction. A `whistle.*`
//! event is addressed to the department of its assignment; a `case.escalated` to the supervision
//! department (督办) and to the department escalated; `case.deferred` / `case.resumed` to the
//! department of each assignment whose clocks stopped or continued. And telling waiting
//! subscriptions how far each department's log has been committed.

use crate::storage::{self, assignment, notice};
use prost::Message;
use sea_orm::{ActiveValue::Set, DatabaseConnection, DatabaseTransaction, DbErr};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::envelope::{self, Event, Payload, assignment_of};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};
use whistle_proto::events::{CaseDeferred, CaseResumed};
use whistle_proto::types::Assignment;

/// Durable consumer name on the whistles stream, shared by every gateway replica.
pub const CONSUMER: &str = "department-gateway";
/// Every whistle event; those not addressed to a department are skipped.
pub const FILTER_SUBJECT: &str = "whistle.v1.>";
/// Durable consumer name on the cases stream, shared by every gateway replica.
pub const CASES_CONSUMER: &str = "department-gateway-cases";
/// Every case event; those addressed to no department (most) are skipped.
pub const CASES_FILTER_SUBJECT: &str = "case.v1.>";
/// The case events that address departments ([`addressed`]), by name: where NATS takes several
/// filter subjects (2.10 and later) the cases consumer is given only these.
pub const CASES_ADDRESSING: [&str; 3] = ["escalated", "deferred", "resumed"];

/// One department a notice of an event goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Addressee {
    pub department_code: String,
    pub assignment_id: String,
    /// The department's assignment as the event carries it, for its projection.
    pub assignment: Option<Assignment>,
}

/// The departments an event is addressed to, each once, in the order notices are written.
pub fn addressees(payload: &Payload) -> Vec<Addressee> {
    addressed(payload)
        .into_iter()
        .map(|(department_code, assignment_id, assignment)| Addressee {
            department_code: department_code.to_string(),
            assignment_id: assignment_id.to_string(),
            assignment: assignment.cloned(),
        })
        .collect()
}

/// [`addressees`], borrowed from the event: `(department code, assignment id, assignment)`. What
/// only asks whether, or which departments, an event addresses uses this and copies nothing.
/// A case event addresses no one unless it is named in [`CASES_ADDRESSING`].
fn addressed(payload: &Payload) -> Vec<(&str, &str, Option<&Assignment>)> {
    let kind = envelope::kind(payload);
    if kind.family == "case" && !CASES_ADDRESSING.contains(&kind.name) {
        // the cases consumer is not given it where NATS takes several filter subjects
        return Vec::new();
    }
    let named: Vec<(&str, &str, Option<&Assignment>)> = match payload {
        Payload::CaseEscalated(escalated) => vec![
            (&escalated.supervisor_code, &escalated.assignment_id, None),
            (
                &escalated.department_code,
                &escalated.assignment_id,
                escalated.assignment.as_ref(),
            ),
        ],
        Payload::CaseDeferred(CaseDeferred { assignments, .. })
        | Payload::CaseResumed(CaseResumed { assignments, .. }) => assignments
            .iter()
            .map(|clocks| {
                (
                    clocks.department_code.as_str(),
                    clocks.assignment_id.as_str(),
                    None,
                )
            })
            .collect(),
        payload if envelope::kind(payload).family == "whistle" => assignment_of(payload)
            .map(|assignment| {
                (
                    assignment.department_code.as_str(),
                    assignment.assignment_id.as_str(),
                    Some(assignment),
                )
            })
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    let mut addressed = Vec::with_capacity(named.len());
    for addressee in named {
        let department_code = addressee.0;
        if !department_code.is_empty()
            && !addressed
                .iter()
                .any(|(known, _, _)| *known == department_code)
        {
            addressed.push(addressee);
        }
    }
    addressed
}

/// The last committed sequence of each department's notice log, as far as this process knows:
/// what idle subscriptions wait on. Raised by this process's own commits (the batch knows what it
/// numbered) and by [`follow_notice_counters`] for other replicas'.
///
/// It also keeps the newest notices this process committed for each department with a
/// subscription open here ([`NoticeSignal::watch`]), so that a live subscription is handed them
/// without reading them back ([`NoticeSignal::recent_after`]).
#[derive(Debug, Clone)]
pub struct NoticeSignal {
    latest: watch::Sender<HashMap<String, i64>>,
    recent: Arc<Mutex<RecentNotices>>,
}

impl Default for NoticeSignal {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(HashMap::new()),
            recent: Arc::default(),
        }
    }
}

/// Newest notices kept per watched department, at most.
const RECENT_PER_DEPARTMENT: usize = 16;
/// Encoded event bytes kept per watched department, at most (a few large events push out the
/// older notices; a subscription missing them reads them from the database).
const RECENT_BYTES_PER_DEPARTMENT: usize = 64 * 1024;

/// The notices this process committed lately, for the departments subscribed here.
#[derive(Debug, Default)]
struct RecentNotices {
    /// Subscriptions open in this process, per department.
    watchers: HashMap<String, usize>,
    /// Each watched department's newest committed notices by sequence, and their event bytes.
    departments: HashMap<String, (BTreeMap<i64, notice::Model>, usize)>,
}

/// A subscription's hold on its department's recent notices; they are forgotten when the last
/// hold of the department is dropped.
#[derive(Debug)]
pub struct NoticeWatch {
    recent: Arc<Mutex<RecentNotices>>,
    department_code: String,
}

impl Drop for NoticeWatch {
    fn drop(&mut self) {
        let mut recent = lock(&self.recent);
        let remaining = recent
            .watchers
            .get_mut(&self.department_code)
            .map(|watchers| {
                *watchers = watchers.saturating_sub(1);
                *watchers
            });
        if remaining == Some(0) {
            recent.watchers.remove(&self.department_code);
            recent.departments.remove(&self.department_code);
        }
    }
}

/// The lock of the recent notices; a panic while it was held cannot leave a notice half-added.
fn lock(recent: &Mutex<RecentNotices>) -> std::sync::MutexGuard<'_, RecentNotices> {
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NoticeSignal {
    /// Keeps the department's notices committed from now on in memory, until the watch is dropped.
    pub fn watch(&self, department_code: &str) -> NoticeWatch {
        *lock(&self.recent)
            .watchers
            .entry(department_code.to_string())
            .or_default() += 1;
        NoticeWatch {
            recent: self.recent.clone(),
            department_code: department_code.to_string(),
        }
    }

    /// Whether a subscription here watches the department.
    pub fn is_watched(&self, department_code: &str) -> bool {
        lock(&self.recent).watchers.contains_key(department_code)
    }

    /// Keeps committed notices of watched departments (call before [`NoticeSignal::raise`], so a
    /// woken subscription finds them).
    pub fn remember(&self, notices: Vec<notice::Model>) {
        if notices.is_empty() {
            return;
        }
        let mut recent = lock(&self.recent);
        let RecentNotices {
            watchers,
            departments,
        } = &mut *recent;
        for row in notices {
            if !watchers.contains_key(&row.department_code) {
                continue;
            }
            let (kept, bytes) = departments.entry(row.department_code.clone()).or_default();
            *bytes += row.event.len();
            if let Some(replaced) = kept.insert(row.sequence, row) {
                *bytes -= replaced.event.len();
            }
            while kept.len() > RECENT_PER_DEPARTMENT || *bytes > RECENT_BYTES_PER_DEPARTMENT {
                let Some((_, oldest)) = kept.pop_first() else {
                    break;
                };
                *bytes -= oldest.event.len();
            }
        }
    }

    /// The department's notices from `after + 1` on, as far as they are kept here without a gap
    /// (at most `limit`); empty when `after + 1` is not kept (not committed by this process, or
    /// pushed out): then they are read from the database.
    pub fn recent_after(
        &self,
        department_code: &str,
        after: i64,
        limit: usize,
    ) -> Vec<notice::Model> {
        let recent = lock(&self.recent);
        let Some((kept, _)) = recent.departments.get(department_code) else {
            return Vec::new();
        };
        let first = after.saturating_add(1);
        kept.range(first..)
            .zip(first..)
            .take_while(|((sequence, _), expected)| **sequence == *expected)
            .take(limit)
            .map(|((_, row), _)| row.clone())
            .collect()
    }

    /// A receiver of the last committed sequence per department; it sees every raise after this call.
    pub fn subscribe(&self) -> watch::Receiver<HashMap<String, i64>> {
        self.latest.subscribe()
    }

    /// Raises the known sequences to `counters`; wakes the subscriptions only when one rose.
    pub fn raise(&self, counters: impl IntoIterator<Item = (String, i64)>) {
        self.latest.send_if_modified(|latest| {
            let mut raised = false;
            for (department_code, sequence) in counters {
                match latest.get_mut(&department_code) {
                    Some(known) if *known >= sequence => {}
                    Some(known) => {
                        *known = sequence;
                        raised = true;
                    }
                    None => {
                        latest.insert(department_code, sequence);
                        raised = true;
                    }
                }
            }
            raised
        });
    }
}

/// Reads every department's last committed sequence (one query for the whole process, however many
/// subscriptions wait) at start and every `poll_interval`, for the notices other replicas
/// committed, and raises `signal`, until `shutdown`. This process's own commits raise it at once
/// ([`NoticeRecorder`]).
pub async fn follow_notice_counters(
    db: DatabaseConnection,
    signal: NoticeSignal,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match storage::notice_counters(&db).await {
            Ok(counters) => signal.raise(counters),
            Err(error) => tracing::warn!(%error, "reading the notice counters failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// The inbox handler that writes notices and the assignments projection. It gathers a batch's
/// rows while the batch's events are handled and writes them just before the commit, a few
/// multi-row statements for the whole batch. A consumer applies one batch at a time, so each
/// consumer needs its own recorder.
#[derive(Debug)]
pub struct NoticeRecorder {
    clock: SharedClock,
    signal: NoticeSignal,
    /// Where the traces the batch wrote go once it commits.
    traces: storage::TraceCache,
    batch: std::sync::Mutex<PendingNotices>,
}

/// What the batch in progress will write.
#[derive(Debug, Default)]
struct PendingNotices {
    /// Each addressed department's last sequence: as committed when the batch took the counters,
    /// then raised by every notice the batch numbers.
    last_sequence: HashMap<String, i64>,
    /// The counters as the batch took them (checked when they are written back).
    locked: HashMap<String, i64>,
    /// The departments the batch numbered notices for, with their new last sequence.
    raised: BTreeMap<String, i64>,
    /// The rows gathered since the last write.
    rows: PendingRows,
    /// Encoded bytes held in `rows` (notices and assignments).
    bytes: usize,
    /// The assignments' traces written by this batch, for the cache after the commit.
    traces_written: Vec<(String, String)>,
    /// The departments it addresses that a subscription here watched when it started.
    watching: BTreeSet<String>,
    /// Copies of the batch's notices to those departments, kept in memory once it commits.
    watched: Vec<notice::Model>,
    /// Encoded bytes held in `watched`; past [`PENDING_BYTES`] no more copies are made.
    watched_bytes: usize,
}

/// Rows gathered and not written yet, past which `handle` writes them at once: a batch of large
/// events never holds more than about this much beside the events themselves.
const PENDING_BYTES: usize = 256 * 1024;

/// The rows of a batch to write: notices, traces and assignments (the counters are written once,
/// before the commit).
#[derive(Debug, Default)]
struct PendingRows {
    notices: Vec<notice::ActiveModel>,
    /// The trace of each assignment's first notice.
    traces: BTreeMap<String, String>,
    /// The newest version of each assignment.
    assignments: HashMap<String, assignment::Model>,
}

impl PendingNotices {
    fn take_rows(&mut self) -> PendingRows {
        self.bytes = 0;
        std::mem::take(&mut self.rows)
    }

    /// Numbers the event's notices and adds their rows to the batch's.
    fn gather(
        &mut self,
        subject: &str,
        event: &Event,
        encoded: &[u8],
        traceparent: Option<&str>,
        addressed: Vec<Addressee>,
        now_ms: i64,
    ) -> Result<(), HandleError> {
        let kind = event
            .payload
            .as_ref()
            .map(|payload| envelope::kind(payload).label())
            .unwrap_or_default();
        for addressee in addressed {
            let department_code = addressee.department_code.as_str();
            let Some(last) = self.last_sequence.get_mut(department_code) else {
                return Err(HandleError::Transient(DbErr::Custom(format!(
                    "the notice counter of {department_code} was not taken at the start of the batch"
                ))));
            };
            *last += 1;
            let sequence = *last;
            self.raised.insert(department_code.to_string(), sequence);
            if self.watched_bytes < PENDING_BYTES && self.watching.contains(department_code) {
                self.watched_bytes += encoded.len();
                self.watched.push(notice::Model {
                    // the key the database gives it; nothing reads it from memory
                    id: 0,
                    department_code: department_code.to_string(),
                    sequence,
                    event_id: event.event_id.clone(),
                    subject: subject.to_string(),
                    kind: kind.clone(),
                    case_id: event.case_id.clone(),
                    assignment_id: addressee.assignment_id.clone(),
                    event: encoded.to_vec(),
                    created_at_ms: now_ms,
                });
            }
            self.rows.notices.push(notice::ActiveModel {
                department_code: Set(department_code.to_string()),
                sequence: Set(sequence),
                event_id: Set(event.event_id.clone()),
                subject: Set(subject.to_string()),
                kind: Set(kind.clone()),
                case_id: Set(event.case_id.clone()),
                assignment_id: Set(addressee.assignment_id.clone()),
                event: Set(encoded.to_vec()),
                created_at_ms: Set(now_ms),
                ..Default::default()
            });
            self.bytes += encoded.len();
            if let Some(traceparent) = traceparent {
                self.rows
                    .traces
                    .entry(addressee.assignment_id.clone())
                    .or_insert_with(|| traceparent.to_string());
            }
            if let Some(assignment) = &addressee.assignment {
                let case_id = if assignment.case_id.is_empty() {
                    event.case_id.clone()
                } else {
                    assignment.case_id.clone()
                };
                let model = assignment::Model {
                    assignment_id: assignment.assignment_id.clone(),
                    department_code: department_code.to_string(),
                    case_id,
                    status: assignment.status,
                    version: i64::try_from(assignment.version).unwrap_or(i64::MAX),
                    assignment: assignment.encode_to_vec(),
                    updated_at_ms: now_ms,
                };
                // the newest version wins, a later one of the same version too (as the upsert)
                match self.rows.assignments.get(&model.assignment_id) {
                    Some(kept) if kept.version > model.version => {}
                    _ => {
                        self.bytes += model.assignment.len();
                        self.rows
                            .assignments
                            .insert(model.assignment_id.clone(), model);
                    }
                }
            }
            // debug, not info: at load this line was a tenth of the gateway's CPU, and the notice is
            // kept in the notice table, its event counted in whistle_inbox_applied_total
            tracing::debug!(
                department = %department_code,
                sequence,
                kind = %kind,
                case_id = %event.case_id,
                assignment_id = %addressee.assignment_id,
                "notice recorded"
            );
        }
        Ok(())
    }
}

impl PendingRows {
    /// Notices in the order they were numbered; an assignment's row written by an earlier flush of
    /// the same batch is replaced only by a version not older (the upsert's condition).
    /// Returns the traces written (those of assignments not remembered before).
    async fn write(
        self,
        transaction: &DatabaseTransaction,
    ) -> Result<Vec<(String, String)>, DbErr> {
        storage::insert_notices(transaction, self.notices).await?;
        let traces = storage::remember_assignment_traces(transaction, &self.traces).await?;
        let mut assignments: Vec<assignment::Model> = self.assignments.into_values().collect();
        assignments.sort_by(|a, b| a.assignment_id.cmp(&b.assignment_id));
        storage::upsert_assignments(transaction, assignments).await?;
        Ok(traces)
    }
}

impl NoticeRecorder {
    pub fn new(clock: SharedClock, signal: NoticeSignal, traces: storage::TraceCache) -> Self {
        Self {
            clock,
            signal,
            traces,
            batch: std::sync::Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingNotices> {
        // a panic while the lock was held leaves rows the next batch's `before_batch` discards
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The whistle events that echo a department's own action (its system made the call and has the
/// answer): the only notices that may wait out the batch window.
const OWN_ACTIONS: [&str; 4] = ["acknowledged", "on_site", "progressed", "resolved"];

impl EventHandler for NoticeRecorder {
    /// Only the echoes of departments' own actions ([`OWN_ACTIONS`], the subject's last token).
    fn may_wait(&self, subject: &str) -> bool {
        subject
            .rsplit('.')
            .next()
            .is_some_and(|name| OWN_ACTIONS.contains(&name))
    }

    /// Events addressed to a department (every whistle event, and the case events that carry
    /// assignments); an event without a payload is applied to be rejected.
    fn applies(&self, _subject: &str, event: &Event) -> bool {
        event
            .payload
            .as_ref()
            .is_none_or(|payload| !addressed(payload).is_empty())
    }

    /// Takes the notice counters of every department the batch addresses, in code order, before
    /// anything is written (see [`storage::lock_notice_counters`]), and starts the batch's rows
    /// afresh (a batch that failed or was rolled back to be applied event by event left its own).
    async fn before_batch(
        &self,
        transaction: &DatabaseTransaction,
        events: &[BatchEvent<'_>],
    ) -> Result<(), DbErr> {
        *self.pending() = PendingNotices::default();
        let departments: BTreeSet<&str> = events
            .iter()
            .filter_map(|batch_event| batch_event.event.payload.as_ref())
            .flat_map(addressed)
            .map(|(department_code, _, _)| department_code)
            .filter(|code| whistle_proto::rules::check_department_code(code).is_ok())
            .collect();
        let last_sequence = storage::lock_notice_counters(transaction, &departments).await?;
        let watching = departments
            .iter()
            .filter(|code| self.signal.is_watched(code))
            .map(|code| code.to_string())
            .collect();
        let mut pending = self.pending();
        pending.watching = watching;
        pending.locked = last_sequence.clone();
        pending.last_sequence = last_sequence;
        Ok(())
    }

    async fn handle(
        &self,
        transaction: &DatabaseTransaction,
        subject: &str,
        event: &Event,
    ) -> Result<(), HandleError> {
        let Some(payload) = event.payload.as_ref() else {
            return Err(HandleError::Rejected("event has no payload".into()));
        };
        let addressed = addressees(payload);
        if addressed.is_empty() {
            tracing::debug!(subject, event_id = %event.event_id, "event addressed to no department");
            return Ok(());
        }
        for addressee in &addressed {
            if let Err(reason) =
                whistle_proto::rules::check_department_code(&addressee.department_code)
            {
                return Err(HandleError::Rejected(format!("department_code {reason}")));
            }
            if addressee.assignment_id.is_empty() {
                return Err(HandleError::Rejected(
                    "assignment has no assignment_id".into(),
                ));
            }
        }
        let now_ms = to_millis(self.clock.now());
        let encoded = event.encode_to_vec();
        let traceparent = whistle_platform::telemetry::current_traceparent();
        let overflow = {
            let mut pending = self.pending();
            pending.gather(
                subject,
                event,
                &encoded,
                traceparent.as_deref(),
                addressed,
                now_ms,
            )?;
            (pending.bytes > PENDING_BYTES).then(|| pending.take_rows())
        };
        if let Some(rows) = overflow {
            let traces = rows.write(transaction).await?;
            self.pending().traces_written.extend(traces);
        }
        Ok(())
    }

    /// Writes the batch's notices, the counters they raised, the traces and the assignments.
    async fn before_commit(&self, transaction: &DatabaseTransaction) -> Result<(), DbErr> {
        let (locked, raised, rows) = {
            let mut pending = self.pending();
            (
                std::mem::take(&mut pending.locked),
                pending.raised.clone(),
                pending.take_rows(),
            )
        };
        if raised.is_empty() {
            return Ok(());
        }
        storage::set_notice_counters(transaction, &locked, &raised).await?;
        let traces = rows.write(transaction).await?;
        self.pending().traces_written.extend(traces);
        Ok(())
    }

    /// The batch committed: its traces go into the cache, its notices to departments subscribed
    /// here are kept for their subscriptions, and the subscriptions learn the sequences it raised
    /// from the batch itself, without reading the counters back (the counters were locked, so
    /// every lower sequence committed before them). Other replicas' notices are found by
    /// [`follow_notice_counters`]' poll and read from the database.
    fn after_commit(&self) {
        let (traces, raised, watched) = {
            let mut pending = self.pending();
            pending.watched_bytes = 0;
            (
                std::mem::take(&mut pending.traces_written),
                std::mem::take(&mut pending.raised),
                std::mem::take(&mut pending.watched),
            )
        };
        self.traces.remember(traces);
        // kept before the raise wakes the subscriptions that hand them out
        self.signal.remember(watched);
        self.signal.raise(raised);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_proto::events::{
        AssignmentEvidenceAttached, AssignmentRecurrent, AssignmentReportMerged,
    };

    fn assignment(department_code: &str) -> Option<Assignment> {
        Some(Assignment {
            assignment_id: "a-1".into(),
            department_code: department_code.into(),
            ..Default::default()
        })
    }

    /// Every case event named in [`CASES_ADDRESSING`] addresses its departments, so the cases
    /// consumer narrowed to them (NATS 2.10 and later) is given what it applies.
    #[test]
    fn the_case_events_named_as_addressing_address_their_departments() {
        use whistle_proto::events::AssignmentClock;
        use whistle_proto::events::{CaseDeferred, CaseEscalated, CaseResumed};
        let clocks = || {
            vec![AssignmentClock {
                assignment_id: "a-1".into(),
                department_code: "zw-sanitation".into(),
                ..Default::default()
            }]
        };
        let payloads = [
            Payload::CaseEscalated(CaseEscalated {
                assignment_id: "a-1".into(),
                department_code: "zw-sanitation".into(),
                supervisor_code: "zw-supervision".into(),
                ..Default::default()
            }),
            Payload::CaseDeferred(CaseDeferred {
                assignments: clocks(),
                ..Default::default()
            }),
            Payload::CaseResumed(CaseResumed {
                assignments: clocks(),
                ..Default::default()
            }),
        ];
        let mut names: Vec<&str> = payloads
            .iter()
            .inspect(|payload| assert!(!addressed(payload).is_empty(), "{payload:?}"))
            .map(|payload| envelope::kind(payload).name)
            .collect();
        names.sort_unstable();
        let mut named = CASES_ADDRESSING.to_vec();
        named.sort_unstable();
        assert_eq!(names, named);
    }

    #[test]
    fn dispatch_notices_about_a_case_go_to_the_department_of_their_assignment() {
        for payload in [
            Payload::AssignmentReportMerged(AssignmentReportMerged {
                assignment: assignment("zw-sanitation"),
                ..Default::default()
            }),
            Payload::AssignmentEvidenceAttached(AssignmentEvidenceAttached {
                assignment: assignment("zw-sanitation"),
                ..Default::default()
            }),
            Payload::AssignmentRecurrent(AssignmentRecurrent {
                assignment: assignment("zw-sanitation"),
                ..Default::default()
            }),
        ] {
            let addressed = addressees(&payload);
            assert_eq!(addressed.len(), 1, "{payload:?}");
            assert_eq!(addressed[0].department_code, "zw-sanitation");
            assert_eq!(addressed[0].assignment_id, "a-1");
        }
    }

    fn kept(department_code: &str, sequence: i64, bytes: usize) -> notice::Model {
        notice::Model {
            id: 0,
            department_code: department_code.into(),
            sequence,
            event_id: format!("e-{sequence}"),
            subject: String::new(),
            kind: String::new(),
            case_id: String::new(),
            assignment_id: String::new(),
            event: vec![0; bytes],
            created_at_ms: 0,
        }
    }

    fn sequences(rows: &[notice::Model]) -> Vec<i64> {
        rows.iter().map(|row| row.sequence).collect()
    }

    #[test]
    fn only_the_echoes_of_a_departments_own_actions_may_wait() {
        use whistle_proto::events::{
            AssignmentAcknowledged, AssignmentCheckedIn, AssignmentExtended, AssignmentOverdue,
            AssignmentProgressed, AssignmentResolved, AssignmentReturnDecided, WhistleIssued,
        };
        let recorder = NoticeRecorder::new(
            Arc::new(whistle_platform::SystemClock),
            NoticeSignal::default(),
            storage::TraceCache::default(),
        );
        let may_wait = |payload: Payload| {
            let event = envelope::new_event(
                &whistle_platform::SystemClock,
                "whistle-dispatch",
                "case-1",
                2,
                Some(whistle_platform::testing::demo_region()),
                payload,
            );
            let subject = envelope::subject(&event).expect("subject");
            (subject.clone(), recorder.may_wait(&subject))
        };
        let a = assignment("zw-sanitation");
        for (subject, waits) in [
            may_wait(Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentProgressed(AssignmentProgressed {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentResolved(AssignmentResolved {
                assignment: a.clone(),
                ..Default::default()
            })),
        ] {
            assert!(waits, "{subject}");
        }
        for (subject, waits) in [
            may_wait(Payload::WhistleIssued(WhistleIssued {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentOverdue(AssignmentOverdue {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentExtended(AssignmentExtended {
                assignment: a.clone(),
                ..Default::default()
            })),
            may_wait(Payload::AssignmentReturnDecided(AssignmentReturnDecided {
                assignment: a.clone(),
                ..Default::default()
            })),
        ] {
            assert!(!waits, "{subject} asks someone to act: written at once");
        }
    }

    #[test]
    fn recent_notices_are_handed_out_only_without_a_gap() {
        let signal = NoticeSignal::default();
        let _watch = signal.watch("d");
        // two batches whose after_commit ran in the other order than their commits
        signal.remember(vec![kept("d", 3, 1)]);
        signal.remember(vec![kept("d", 1, 1), kept("d", 2, 1)]);
        // 4 was another replica's: not here
        signal.remember(vec![kept("d", 5, 1)]);
        assert_eq!(sequences(&signal.recent_after("d", 0, 10)), vec![1, 2, 3]);
        assert_eq!(sequences(&signal.recent_after("d", 1, 1)), vec![2]);
        assert!(signal.recent_after("d", 3, 10).is_empty(), "4 is missing");
        assert_eq!(sequences(&signal.recent_after("d", 4, 10)), vec![5]);
    }

    #[test]
    fn recent_notices_are_bounded_by_count_and_bytes() {
        let signal = NoticeSignal::default();
        let _watch = signal.watch("d");
        let many: Vec<_> = (1..=RECENT_PER_DEPARTMENT as i64 + 10)
            .map(|sequence| kept("d", sequence, 1))
            .collect();
        signal.remember(many);
        let all = signal.recent_after("d", 10, usize::MAX);
        assert_eq!(all.len(), RECENT_PER_DEPARTMENT);
        assert!(
            signal.recent_after("d", 0, 10).is_empty(),
            "the oldest went"
        );

        let large = RECENT_BYTES_PER_DEPARTMENT / 2;
        let next = RECENT_PER_DEPARTMENT as i64 + 11;
        signal.remember(
            (next..next + 3)
                .map(|sequence| kept("d", sequence, large))
                .collect(),
        );
        // two large ones fit with nothing else; the third pushed out everything before it
        assert_eq!(
            sequences(&signal.recent_after("d", next, usize::MAX)),
            vec![next + 1, next + 2]
        );
    }

    #[test]
    fn only_watched_departments_are_kept() {
        let signal = NoticeSignal::default();
        let first = signal.watch("d");
        let second = signal.watch("d");
        signal.remember(vec![kept("d", 1, 1), kept("other", 1, 1)]);
        assert!(signal.recent_after("other", 0, 10).is_empty());
        drop(first);
        assert_eq!(signal.recent_after("d", 0, 10).len(), 1, "still watched");
        drop(second);
        assert!(signal.recent_after("d", 0, 10).is_empty());
        assert!(!signal.is_watched("d"));
    }
}
