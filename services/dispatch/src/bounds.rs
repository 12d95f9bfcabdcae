//! The largest events dispatch can publish under a limits table, found by playing the largest
//! case through the real aggregate: a report at the limits (intake runs with the same table),
//! whistled to the most departments a whistle may name, deferred and resumed, every department
//! acting with every field at its limit in 4-byte characters, the first three until their evidence
//! is full ([`FULL_DEPARTMENTS`]), asking for more time, then returning (upheld) or resolving, the
//! case failing verification and being reworked, every clock going overdue and escalating with the
//! fullest assignments, before it closes. Checked at start (an event larger than
//! `limits.max_event_bytes` refuses the configuration) and by a unit test with room to spare.

use crate::domain::{
    ActionRules, CalendarTime, Command, DepartmentAction, Evidence, Role, WhistleTarget,
};
use crate::error::DispatchError;
use crate::storage::CaseRecord;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use whistle_platform::ManualClock;
use whistle_platform::clock::Clock;
use whistle_platform::clock::to_proto_timestamp;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::validation::LimitsConfig;
use whistle_proto::events::CaseReported;
use whistle_proto::types::{Attachment, Channel, Place, Region, Severity};

/// How many departments of the largest case fill their evidence: the lead, which returns the case;
/// the first co-department, whose extension is approved; the second, whose extension is refused.
/// Every later department does what the second does. An event carries one department's assignment
/// and, besides it, lists of ids and deadlines that do not grow with evidence, so the largest event
/// of each kind is the same as with every department full (a test compares the two plays), while
/// the case held in memory is a fraction: twenty full departments under the default limits made
/// dispatch's heap peak at ≈39 MiB at start, and its RSS stayed there (docs/benchmarks.md).
pub const FULL_DEPARTMENTS: usize = 3;

/// The size in bytes (payload, subject, headers with a `traceparent`) of the largest event of each
/// kind (`whistle.progressed`, ...): what the start-up check needs. It keeps no event, so the
/// check's memory is one event at a time: keeping the largest of each kind (ten of them near
/// 450 KB) set about a quarter of dispatch's resident memory at start (docs/benchmarks.md).
pub fn largest_event_sizes(
    limits: &LimitsConfig,
) -> Result<BTreeMap<String, usize>, DispatchError> {
    Ok(largest_events_filling(limits, FULL_DEPARTMENTS, false)?
        .into_iter()
        .map(|(kind, (bytes, _))| (kind, bytes))
        .collect())
}

/// The argument under which the dispatch binary plays the largest case for its parent: the limits
/// table as JSON on stdin, the sizes ([`largest_event_sizes`]) as JSON on stdout.
pub const SIZES_ARGUMENT: &str = "--largest-event-sizes";

/// The executable the start-up check runs with [`SIZES_ARGUMENT`], once the binary asked for it.
static CHILD_EXECUTABLE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Has the start-up check ([`checked_event_sizes`]) play the largest case in a child process,
/// `executable` run with [`SIZES_ARGUMENT`]: the case's heap (≈17 MiB at its peak under the default
/// limits) is then the child's, not the service's, whose resident memory glibc keeps near its first
/// peak for the life of the process (docs/benchmarks.md, fifteenth session). The dispatch binary
/// asks for it; tests play in their own process.
pub fn play_in_child_process(executable: std::path::PathBuf) {
    let _ = CHILD_EXECUTABLE.set(executable);
}

/// [`largest_event_sizes`], played in a child process when the binary asked for it
/// ([`play_in_child_process`]), in this one otherwise.
pub fn checked_event_sizes(limits: &LimitsConfig) -> Result<BTreeMap<String, usize>, String> {
    match CHILD_EXECUTABLE.get() {
        None => largest_event_sizes(limits).map_err(|error| error.to_string()),
        Some(executable) => sizes_from_child(executable, limits),
    }
}

fn sizes_from_child(
    executable: &std::path::Path,
    limits: &LimitsConfig,
) -> Result<BTreeMap<String, usize>, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let input = serde_json::to_vec(limits).map_err(|error| error.to_string())?;
    let mut child = Command::new(executable)
        .arg(SIZES_ARGUMENT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", executable.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .map_err(|error| format!("cannot hand the limits to the check: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("the check did not finish: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "the check ({} {SIZES_ARGUMENT}) failed with {}: {}",
            executable.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| format!("the check answered something unreadable: {error}"))
}

/// The child's side of [`checked_event_sizes`]: reads a limits table (JSON) from `input`, plays
/// the largest case and writes the sizes (JSON) to `output`.
pub fn answer_sizes(
    input: impl std::io::Read,
    mut output: impl std::io::Write,
) -> Result<(), String> {
    let limits: LimitsConfig =
        serde_json::from_reader(input).map_err(|error| format!("unreadable limits: {error}"))?;
    let sizes = largest_event_sizes(&limits).map_err(|error| error.to_string())?;
    serde_json::to_writer(&mut output, &sizes).map_err(|error| error.to_string())?;
    output.flush().map_err(|error| error.to_string())
}

/// The largest event of each kind, in bytes as [`largest_event_sizes`], with the event itself.
#[cfg(test)]
fn largest_events(
    limits: &LimitsConfig,
) -> Result<BTreeMap<String, (usize, Event)>, DispatchError> {
    largest_events_filling(limits, FULL_DEPARTMENTS, true)
}

/// The largest event of each kind with the first `full_departments` departments filling their
/// evidence; with the event itself when `keep_events` (an empty one otherwise).
fn largest_events_filling(
    limits: &LimitsConfig,
    full_departments: usize,
    keep_events: bool,
) -> Result<BTreeMap<String, (usize, Event)>, DispatchError> {
    let clock = ManualClock::new(latest_instant());
    let mut largest: BTreeMap<String, (usize, Event)> = BTreeMap::new();
    // one event at a time: materialising every event of the largest case at once (hundreds of
    // them, up to ~450 KB each) made dispatch's start peak at ~220 MiB, and glibc kept that
    // memory for the life of the process
    let mut keep = |record: &mut CaseRecord| -> Result<(), DispatchError> {
        for emitted in record.take_emitted() {
            let event = crate::events::to_event(record, &emitted);
            let bytes = envelope::to_outbox(&event)
                .map_err(DispatchError::unexpected)?
                .traced_wire_bytes();
            let kind = event
                .payload
                .as_ref()
                .map(|payload| envelope::kind(payload).label())
                .unwrap_or_default();
            let entry = largest.entry(kind).or_insert((0, Event::default()));
            if bytes > entry.0 {
                *entry = (bytes, if keep_events { event } else { Event::default() });
            }
        }
        Ok(())
    };
    largest_case(limits, full_departments, &clock, &mut keep)?;
    keep(&mut rejected_case(limits, &clock)?)?;
    keep(&mut locally_resolved_case(limits, &clock)?)?;
    Ok(largest)
}

/// `chars` 4-byte characters.
fn text(chars: usize) -> String {
    "𝄞".repeat(chars)
}

/// A late instant with the longest encoding a timestamp of ours has (2038, full nanoseconds).
fn latest_instant() -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(i32::MAX), 999_999_999).unwrap_or_default()
}

fn largest_attachment(limits: &LimitsConfig) -> Attachment {
    Attachment {
        uri: format!("a://{}", text(limits.uri_chars.saturating_sub(4))),
        sha256: "f".repeat(64),
        media_type: format!("a/{}", text(limits.media_type_chars.saturating_sub(2))),
        size_bytes: u64::MAX,
    }
}

fn largest_evidence(limits: &LimitsConfig, items: usize) -> Vec<Evidence> {
    let attachment = largest_attachment(limits);
    let item = Evidence {
        uri: attachment.uri,
        sha256: attachment.sha256,
        media_type: attachment.media_type,
        size_bytes: attachment.size_bytes,
    };
    vec![item; items]
}

/// A department code of `limits.code_chars` (at most 64, a subject token), unique per `index`.
fn department(limits: &LimitsConfig, index: usize) -> String {
    let width = limits.code_chars.clamp(3, 64);
    format!("{index:d>width$}")
}

/// intake's `case.reported` at the limits.
fn reported_event(limits: &LimitsConfig, clock: &ManualClock) -> (Event, CaseReported) {
    let reported = CaseReported {
        report_id: uuid::Uuid::now_v7().to_string(),
        channel: Channel::Inspection as i32,
        reporter_id: text(limits.id_chars),
        category_code: "E-99-99".into(),
        severity: Severity::Complex as i32,
        description: text(limits.text_chars),
        place: Some(Place {
            grid_code: "999999999999999".into(),
            lat: -89.123_456_789,
            lng: -179.123_456_789,
            address: text(limits.address_chars),
        }),
        attachments: vec![largest_attachment(limits); limits.attachments],
        observed_at: Some(to_proto_timestamp(latest_instant())),
    };
    let region = Region {
        city_code: "999900".into(),
        district_code: "999999".into(),
        street_code: "999999999".into(),
        street_slug: "s".repeat(64),
        community_code: "999999999999".into(),
        grid_code: "999999999999999".into(),
    };
    let event = envelope::new_event(
        clock,
        "whistle-intake",
        &uuid::Uuid::now_v7().to_string(),
        1,
        Some(region),
        Payload::CaseReported(reported.clone()),
    );
    (event, reported)
}

/// Plays the largest case, handing each command's events to `keep` as they come (so they are
/// never all held at once).
fn largest_case(
    limits: &LimitsConfig,
    full_departments: usize,
    clock: &ManualClock,
    keep: &mut dyn FnMut(&mut CaseRecord) -> Result<(), DispatchError>,
) -> Result<(), DispatchError> {
    let (event, reported) = reported_event(limits, clock);
    let mut record = CaseRecord::open(&event, &reported, clock.now());
    let operator = text(limits.id_chars);
    let policy = CalendarTime;
    let mut run = |record: &mut CaseRecord, command: Command| -> Result<(), DispatchError> {
        record.execute(command, clock.now(), &policy)?;
        keep(record)
    };
    let targets: Vec<WhistleTarget> = (0..limits.list_items.max(1))
        .map(|index| WhistleTarget {
            assignment_id: uuid::Uuid::now_v7().to_string(),
            department_code: department(limits, index),
            supervision_department_code: department(limits, 98),
            role: if index == 0 { Role::Lead } else { Role::Co },
        })
        .collect();
    run(
        &mut record,
        Command::Accept {
            by: operator.clone(),
        },
    )?;
    run(
        &mut record,
        Command::Whistle {
            by: operator.clone(),
            targets: targets.clone(),
            limits: crate::domain::Severity::Complex.default_limits(),
            requires_on_site: true,
        },
    )?;
    run(
        &mut record,
        Command::Defer {
            by: operator.clone(),
            reason: text(limits.text_chars),
            until: Some(latest_instant()),
        },
    )?;
    run(
        &mut record,
        Command::Resume {
            by: operator.clone(),
            note: text(limits.text_chars),
        },
    )?;
    let rules = ActionRules {
        check_in_radius_meters: 500.0,
        evidence_per_assignment: limits.evidence_per_assignment,
    };
    let assignments: Vec<(String, String)> = targets
        .iter()
        .map(|target| (target.assignment_id.clone(), target.department_code.clone()))
        .collect();
    let act = |record: &mut CaseRecord, index: usize, action: DepartmentAction| {
        let (assignment_id, department_code) = &assignments[index];
        record
            .execute(
                Command::Act {
                    assignment_id: assignment_id.clone(),
                    department_code: department_code.clone(),
                    action,
                    rules,
                },
                clock.now(),
                &policy,
            )
            .map(|_| ())
            .map_err(DispatchError::from)
    };
    let (lat, lng) = (record.row.lat, record.row.lng);
    let extension = || DepartmentAction::RequestExtension {
        extra: chrono::Duration::days(366),
        reason: text(limits.text_chars),
    };
    for index in 0..assignments.len() {
        act(
            &mut record,
            index,
            DepartmentAction::Acknowledge {
                responsible_person: text(limits.name_chars),
                contact_phone: text(limits.name_chars),
                promised_at: Some(latest_instant()),
            },
        )?;
        // the first department returns the case; the others work it
        let returns = index == 0 && assignments.len() > 1;
        if !returns {
            act(
                &mut record,
                index,
                DepartmentAction::CheckIn {
                    lat,
                    lng,
                    person: text(limits.name_chars),
                },
            )?;
        }
        if index < full_departments {
            fill_evidence(&mut record, limits, &act, index)?;
        }
        let last = if returns {
            DepartmentAction::Return {
                reason: text(limits.text_chars),
                suggested_department_code: department(limits, 99),
            }
        } else {
            DepartmentAction::Resolve {
                resolution: text(limits.text_chars),
                evidence: largest_evidence(limits, limits.attachments),
            }
        };
        act(&mut record, index, last)?;
    }
    if assignments.len() > 1 {
        run(
            &mut record,
            Command::DecideReturn {
                by: operator.clone(),
                assignment_id: assignments[0].0.clone(),
                upheld: true,
                note: text(limits.text_chars),
                route_departments: Vec::new(),
                fallback: None,
            },
        )?;
    }
    // verification fails: the resolved assignments go back to work, fill their evidence again,
    // ask for more time (approved for one, refused for the others), and let every clock pass
    run(
        &mut record,
        Command::Verify {
            by: operator.clone(),
            passed: false,
            note: text(limits.text_chars),
            failed_assignment_ids: Vec::new(),
        },
    )?;
    let returned = usize::from(assignments.len() > 1);
    for (index, (assignment_id, _)) in assignments.iter().enumerate().skip(returned) {
        if index < full_departments {
            fill_evidence(&mut record, limits, &act, index)?;
        }
        act(&mut record, index, extension())?;
        run(
            &mut record,
            Command::DecideExtension {
                by: operator.clone(),
                assignment_id: assignment_id.clone(),
                approved: index == returned,
                note: text(limits.text_chars),
            },
        )?;
    }
    clock.advance(chrono::Duration::days(3 * 366));
    run(&mut record, Command::Tick)?;
    for index in returned..assignments.len() {
        act(
            &mut record,
            index,
            DepartmentAction::Resolve {
                resolution: text(limits.text_chars),
                evidence: largest_evidence(limits, limits.attachments),
            },
        )?;
    }
    run(
        &mut record,
        Command::Verify {
            by: operator,
            passed: true,
            note: text(limits.text_chars),
            failed_assignment_ids: Vec::new(),
        },
    )?;
    Ok(())
}

/// Progress at the limits until the assignment keeps all the evidence it may.
fn fill_evidence(
    record: &mut CaseRecord,
    limits: &LimitsConfig,
    act: &impl Fn(&mut CaseRecord, usize, DepartmentAction) -> Result<(), DispatchError>,
    index: usize,
) -> Result<(), DispatchError> {
    loop {
        let kept = record.case.assignments[index].evidence.len();
        let room = limits.evidence_per_assignment.saturating_sub(kept);
        let adding = room.min(limits.attachments);
        act(
            record,
            index,
            DepartmentAction::Progress {
                note: text(limits.text_chars),
                evidence: largest_evidence(limits, adding),
            },
        )?;
        if adding == 0 || adding == room {
            return Ok(());
        }
    }
}

/// A case the street rejects with the longest reason.
fn rejected_case(limits: &LimitsConfig, clock: &ManualClock) -> Result<CaseRecord, DispatchError> {
    let (event, reported) = reported_event(limits, clock);
    let mut record = CaseRecord::open(&event, &reported, clock.now());
    record.execute(
        Command::Reject {
            by: text(limits.id_chars),
            reason: text(limits.text_chars),
        },
        clock.now(),
        &CalendarTime,
    )?;
    Ok(record)
}

/// A case the community solves itself (自办) with the longest resolution.
fn locally_resolved_case(
    limits: &LimitsConfig,
    clock: &ManualClock,
) -> Result<CaseRecord, DispatchError> {
    let (event, reported) = reported_event(limits, clock);
    let mut record = CaseRecord::open(&event, &reported, clock.now());
    record.execute(
        Command::ResolveLocally {
            by: text(limits.id_chars),
            resolution: text(limits.text_chars),
        },
        clock.now(),
        &CalendarTime,
    )?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_proto::events::event::Payload;

    #[test]
    fn every_event_of_the_largest_case_fits_with_room_to_spare() {
        let limits = LimitsConfig::default();
        let largest = largest_events(&limits).expect("the largest case plays through");
        // the start-up check, which keeps no event, finds the same sizes
        assert_eq!(
            largest_event_sizes(&limits).expect("plays"),
            largest
                .iter()
                .map(|(kind, (bytes, _))| (kind.clone(), *bytes))
                .collect::<BTreeMap<_, _>>()
        );
        for (kind, (bytes, _)) in &largest {
            println!(
                "largest {kind}: {bytes} bytes ({}% of {})",
                bytes * 100 / limits.max_event_bytes,
                limits.max_event_bytes
            );
            // at least a tenth (≈ 52 KB, a dozen more texts at their limit) left for what grows
            assert!(
                *bytes <= limits.max_event_bytes * 9 / 10,
                "{kind} of {bytes} bytes leaves too little room under {}",
                limits.max_event_bytes
            );
        }
        for kind in [
            "whistle.issued",
            "whistle.acknowledged",
            "whistle.on_site",
            "whistle.progressed",
            "whistle.resolved",
            "whistle.returned",
            "case.accepted",
            "case.rejected",
            "case.verified",
            "case.reopened",
            "case.closed",
            "case.deferred",
            "case.resumed",
            "case.resolved_locally",
            "case.escalated",
            "whistle.overdue",
            "whistle.extension_requested",
            "whistle.extended",
            "whistle.extension_refused",
            "whistle.return_decided",
        ] {
            assert!(largest.contains_key(kind), "{kind} not played");
        }
        // the scenario reaches the maxima: every department named, evidence full
        let Some(Payload::WhistleIssued(issued)) = &largest["whistle.issued"].1.payload else {
            panic!("not a whistle")
        };
        assert_eq!(issued.co_department_codes.len(), limits.list_items - 1);
        assert_eq!(issued.attachments.len(), limits.attachments);
        let Some(Payload::AssignmentProgressed(progressed)) =
            &largest["whistle.progressed"].1.payload
        else {
            panic!("not progress")
        };
        let assignment = progressed.assignment.as_ref().expect("assignment");
        assert_eq!(assignment.evidence.len(), limits.evidence_per_assignment);
        assert!(
            !assignment.resolution.is_empty(),
            "reworked after resolving"
        );
        let Some(Payload::AssignmentReturned(returned)) = &largest["whistle.returned"].1.payload
        else {
            panic!("not a return")
        };
        let assignment = returned.assignment.as_ref().expect("assignment");
        assert_eq!(assignment.evidence.len(), limits.evidence_per_assignment);
    }

    /// The largest case with only [`FULL_DEPARTMENTS`] filling their evidence finds the largest
    /// event of every kind that every department filling it finds, to the byte, except for the
    /// varint of the case version (an event of the lean play can come at a version under 128 where
    /// the full play is past it: one byte), and holds a fraction of the memory.
    #[test]
    fn filling_three_departments_finds_the_same_largest_events_as_filling_all() {
        let limits = LimitsConfig {
            list_items: 8,
            evidence_per_assignment: 30,
            ..LimitsConfig::default()
        };
        let lean = largest_events(&limits).expect("lean play");
        let full = largest_events_filling(&limits, usize::MAX, false).expect("full play");
        assert_eq!(
            lean.keys().collect::<Vec<_>>(),
            full.keys().collect::<Vec<_>>()
        );
        for (kind, (bytes, _)) in &full {
            let lean_bytes = lean[kind].0;
            assert!(
                lean_bytes <= *bytes && *bytes - lean_bytes <= 1,
                "{kind}: {lean_bytes} bytes filling {FULL_DEPARTMENTS} departments, {bytes} filling all"
            );
        }
    }

    #[test]
    fn a_smaller_evidence_bound_is_played_to_its_end() {
        let limits = LimitsConfig {
            evidence_per_assignment: 12,
            ..LimitsConfig::default()
        };
        let largest = largest_events(&limits).expect("plays");
        let Some(Payload::AssignmentProgressed(progressed)) =
            &largest["whistle.progressed"].1.payload
        else {
            panic!("not progress")
        };
        assert_eq!(
            progressed
                .assignment
                .as_ref()
                .expect("assignment")
                .evidence
                .len(),
            12
        );
    }
}
