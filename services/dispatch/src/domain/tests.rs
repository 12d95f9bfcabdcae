//! The domain's unit and property tests: the assignment's state machine, the clocks, and the case
//! aggregate under any sequence of commands and clock ticks.

use super::*;
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_763_000_000, 0).expect("time") + Duration::minutes(minutes)
}

fn target(assignment_id: &str, department: &str, role: Role) -> WhistleTarget {
    WhistleTarget {
        assignment_id: assignment_id.into(),
        department_code: department.into(),
        supervision_department_code: "zw-supervision".into(),
        role,
    }
}

fn fresh(requires_on_site: bool) -> Assignment {
    Assignment::whistle(
        &target("a1", "zw-sanitation", Role::Lead),
        "c1",
        at(0),
        Severity::Urgent.default_limits(),
        requires_on_site,
        &CalendarTime,
    )
}

fn evidence() -> Evidence {
    Evidence {
        uri: "https://files.example/1.jpg".into(),
        sha256: String::new(),
        media_type: String::new(),
        size_bytes: 0,
    }
}

const LAT: f64 = 32.6369;
const LNG: f64 = 110.7986;

fn rules() -> ActionRules {
    ActionRules {
        check_in_radius_meters: 500.0,
        evidence_per_assignment: 5,
    }
}

/// A case whistled at minute 0 to the sanitation office (lead) and the enforcement bureau, with
/// the urgent limits (30 min / 2 h / 24 h).
fn whistled_case() -> Case {
    let mut case = Case::reported("c1", 1, Severity::Urgent, LAT, LNG);
    case.execute(
        Command::Whistle {
            by: "op".into(),
            targets: vec![
                target("a1", "zw-sanitation", Role::Lead),
                target("a2", "zw-enforcement", Role::Co),
            ],
            limits: Severity::Urgent.default_limits(),
            requires_on_site: true,
        },
        at(0),
        &CalendarTime,
    )
    .expect("whistle");
    case
}

fn act(case: &mut Case, minute: i64, id: &str, action: DepartmentAction) -> Vec<Emitted> {
    let department = case
        .assignment(id)
        .map(|a| a.department_code.clone())
        .unwrap_or_default();
    case.execute(
        Command::Act {
            assignment_id: id.into(),
            department_code: department,
            action,
            rules: rules(),
        },
        at(minute),
        &CalendarTime,
    )
    .unwrap_or_else(|error| panic!("{id} at {minute}: {error}"))
}

fn acknowledge() -> DepartmentAction {
    DepartmentAction::Acknowledge {
        responsible_person: "王主任".into(),
        contact_phone: String::new(),
        promised_at: None,
    }
}

fn check_in() -> DepartmentAction {
    DepartmentAction::CheckIn {
        lat: LAT,
        lng: LNG,
        person: "王".into(),
    }
}

fn resolve() -> DepartmentAction {
    DepartmentAction::Resolve {
        resolution: "已处理".into(),
        evidence: vec![],
    }
}

fn give_back() -> DepartmentAction {
    DepartmentAction::Return {
        reason: "不属本部门".into(),
        suggested_department_code: String::new(),
    }
}

fn tick(case: &mut Case, minute: i64) -> Vec<Emitted> {
    case.execute(Command::Tick, at(minute), &CalendarTime)
        .expect("a tick is never refused")
}

/// `(assignment, clock, "overdue" | "escalated")` of the clock events.
fn firings(events: &[Emitted]) -> Vec<(String, ClockKind, &'static str)> {
    events
        .iter()
        .filter_map(|emitted| match &emitted.event {
            CaseEvent::Overdue {
                assignment, clock, ..
            } => Some((assignment.assignment_id.clone(), *clock, "overdue")),
            CaseEvent::Escalated {
                assignment, clock, ..
            } => Some((assignment.assignment_id.clone(), *clock, "escalated")),
            _ => None,
        })
        .collect()
}

#[test]
fn limits_follow_severity_and_overrides() {
    let emergency = Severity::Emergency.default_limits();
    assert_eq!(emergency.acknowledge_within, Duration::minutes(15));
    assert_eq!(emergency.on_site_within, Duration::minutes(30));
    assert_eq!(
        emergency.escalate_after(ClockKind::Acknowledge),
        Duration::seconds(450),
        "half the limit by default"
    );
    assert_eq!(
        Severity::Complex.default_limits().resolve_within,
        Duration::days(15)
    );
    let overrides = LimitOverrides {
        resolve_within: Some(Duration::hours(4)),
        acknowledge_escalate_after: Some(Duration::seconds(5)),
        ..Default::default()
    };
    let limits = overrides.apply(emergency);
    assert_eq!(limits.resolve_within, Duration::hours(4));
    assert_eq!(limits.acknowledge_within, Duration::minutes(15));
    assert_eq!(
        limits.escalate_after(ClockKind::Acknowledge),
        Duration::seconds(5)
    );
    assert!(
        LimitOverrides {
            acknowledge_within: Some(Duration::zero()),
            ..Default::default()
        }
        .check()
        .is_err()
    );
    assert!(
        LimitOverrides {
            acknowledge_within: Some(Duration::seconds(1)),
            ..Default::default()
        }
        .check()
        .is_ok(),
        "no minimum"
    );
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
    assert_eq!(assignment.clocks.len(), 3);
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
    match assignment.check_in(at(151), 20.0, 500.0) {
        Err(CheckInError::Transition(twice)) => {
            assert!(twice.to_string().contains("checked in already"), "{twice}")
        }
        other => panic!("a second check-in: {other:?}"),
    }
    assert_eq!(
        assignment.resolve(at(200), "清运完毕".into(), vec![]),
        Ok(true)
    );
    assert_eq!(assignment.status, AssignmentStatus::Resolved);
    assert_eq!(assignment.version, 4);
    // a refusal says what the state allows, not a step already taken
    let again = assignment
        .resolve(at(201), "again".into(), vec![])
        .expect_err("resolved once");
    assert!(
        again.to_string().contains("verification") && !again.to_string().contains("acknowledge"),
        "{again}"
    );
    assert!(
        assignment
            .clocks
            .iter()
            .all(|clock| matches!(clock.state, ClockState::Met { .. }))
    );
}

#[test]
fn check_in_far_away_is_refused_and_on_site_is_optional_when_not_required() {
    let mut assignment = fresh(true);
    assignment
        .acknowledge(at(1), "x".into(), String::new(), None)
        .expect("ack");
    assert!(matches!(
        assignment.check_in(at(2), 1200.0, 500.0),
        Err(CheckInError::TooFar { .. })
    ));
    assert_eq!(assignment.status, AssignmentStatus::Acknowledged);

    let mut assignment = fresh(false);
    assert!(
        assignment.clock(ClockKind::OnSite).is_none(),
        "no on-site clock"
    );
    assignment
        .acknowledge(at(1), "x".into(), String::new(), None)
        .expect("ack");
    assert_eq!(assignment.resolve(at(2), "ok".into(), vec![]), Ok(true));
    assert_eq!(
        assignment.acknowledge(at(31), "x".into(), String::new(), None),
        Err(TransitionError {
            action: "acknowledge",
            current: "RESOLVED",
            hint: "it is resolved; the community's verification (核查) decides what follows"
        })
    );
}

#[test]
fn a_late_acknowledgement_is_not_within_limit() {
    let mut assignment = fresh(true);
    assert_eq!(
        assignment.acknowledge(at(31), "x".into(), String::new(), None),
        Ok(false)
    );
}

#[test]
fn an_unmet_clock_goes_overdue_at_its_deadline_and_escalates_once_after_the_second_interval() {
    let mut case = whistled_case();
    act(&mut case, 5, "a2", acknowledge());
    assert!(tick(&mut case, 29).is_empty());
    let overdue = tick(&mut case, 30);
    assert_eq!(
        firings(&overdue),
        vec![("a1".to_string(), ClockKind::Acknowledge, "overdue")],
        "the met clock of a2 never fires"
    );
    let CaseEvent::Overdue {
        assignment,
        late_by,
        escalates_at,
        ..
    } = &overdue[0].event
    else {
        panic!("not overdue")
    };
    assert!(assignment.flags.contains(&Flag::AckOverdue));
    assert!(assignment.is_overdue());
    assert_eq!(*late_by, Duration::zero());
    assert_eq!(*escalates_at, at(45), "half of the 30-minute limit later");
    assert!(tick(&mut case, 44).is_empty(), "fires once");
    let escalated = tick(&mut case, 46);
    let CaseEvent::Escalated {
        assignment,
        overdue_by,
        supervision_department_code,
        ..
    } = &escalated[0].event
    else {
        panic!("not escalated: {escalated:?}")
    };
    assert_eq!(escalated.len(), 1);
    assert_eq!(supervision_department_code, "zw-supervision");
    assert_eq!(*overdue_by, Duration::minutes(16));
    assert!(assignment.flags.contains(&Flag::Escalated));
    assert!(
        firings(&tick(&mut case, 100))
            .iter()
            .all(|(id, clock, _)| !(id == "a1" && *clock == ClockKind::Acknowledge)),
        "the acknowledge clock fired both steps and never again"
    );
    // a late acknowledgement meets the clock: the assignment is no longer overdue
    act(&mut case, 101, "a1", acknowledge());
    assert!(!case.assignment("a1").expect("a1").is_overdue());
}

#[test]
fn dispatch_down_past_both_steps_fires_both_once_in_order() {
    let mut case = whistled_case();
    let events = tick(&mut case, 60 * 40);
    let fired = firings(&events);
    // both assignments: every clock overdue and escalated (ack 30 m, on site 2 h, resolve 24 h,
    // escalating half the limit after each deadline)
    assert_eq!(fired.len(), 12, "{fired:?}");
    assert_eq!(
        fired[..2],
        [
            ("a1".to_string(), ClockKind::Acknowledge, "overdue"),
            ("a1".to_string(), ClockKind::Acknowledge, "escalated")
        ]
    );
    assert!(tick(&mut case, 60 * 41).is_empty());
    let versions: Vec<u64> = events.iter().map(|emitted| emitted.version).collect();
    assert!(versions.windows(2).all(|pair| pair[1] == pair[0] + 1));
}

#[test]
fn an_approved_extension_moves_the_resolve_deadline_and_the_old_one_never_fires() {
    let mut case = whistled_case();
    act(&mut case, 1, "a1", acknowledge());
    act(&mut case, 2, "a1", check_in());
    let requested = act(
        &mut case,
        3,
        "a1",
        DepartmentAction::RequestExtension {
            extra: Duration::hours(48),
            reason: "等待备件".into(),
        },
    );
    assert!(matches!(
        &requested[0].event,
        CaseEvent::ExtensionRequested { current_due_at, .. } if *current_due_at == at(24 * 60)
    ));
    let again = case.execute(
        Command::Act {
            assignment_id: "a1".into(),
            department_code: "zw-sanitation".into(),
            action: DepartmentAction::RequestExtension {
                extra: Duration::hours(1),
                reason: "again".into(),
            },
            rules: rules(),
        },
        at(4),
        &CalendarTime,
    );
    assert!(
        matches!(&again, Err(CaseError::Refused(message)) if message.contains("one request per clock")),
        "{again:?}"
    );
    let decided = case
        .execute(
            Command::DecideExtension {
                by: "op".into(),
                assignment_id: "a1".into(),
                approved: true,
                note: "同意".into(),
            },
            at(10),
            &CalendarTime,
        )
        .expect("approve");
    let CaseEvent::Extended {
        assignment,
        previous_due_at,
        new_due_at,
        ..
    } = &decided[0].event
    else {
        panic!("not extended: {decided:?}")
    };
    assert_eq!(*previous_due_at, at(24 * 60));
    assert_eq!(*new_due_at, at(72 * 60));
    assert_eq!(assignment.resolve_by, at(72 * 60));
    assert!(assignment.flags.contains(&Flag::Extended));
    // the old deadline passes: nothing of a1 fires
    let fired = firings(&tick(&mut case, 24 * 60 + 1));
    assert!(fired.iter().all(|(id, _, _)| id != "a1"), "{fired:?}");
    let fired = firings(&tick(&mut case, 72 * 60));
    assert!(fired.contains(&("a1".into(), ClockKind::Resolve, "overdue")));
    // a decision needs a pending request
    let twice = case.execute(
        Command::DecideExtension {
            by: "op".into(),
            assignment_id: "a1".into(),
            approved: false,
            note: String::new(),
        },
        at(72 * 60),
        &CalendarTime,
    );
    assert!(matches!(twice, Err(CaseError::Refused(_))), "{twice:?}");
}

#[test]
fn deferral_stops_every_clock_and_resuming_continues_with_the_time_left() {
    let mut case = whistled_case();
    let deferred = case
        .execute(
            Command::Defer {
                by: "op".into(),
                reason: "等待预算".into(),
                until: None,
            },
            at(10),
            &CalendarTime,
        )
        .expect("defer");
    assert!(
        matches!(&deferred[0].event, CaseEvent::Deferred { assignments, .. } if assignments.len() == 2)
    );
    assert!(
        tick(&mut case, 10_000).is_empty(),
        "stopped clocks never fire"
    );
    let refused = case.execute(
        Command::Act {
            assignment_id: "a1".into(),
            department_code: "zw-sanitation".into(),
            action: acknowledge(),
            rules: rules(),
        },
        at(10_001),
        &CalendarTime,
    );
    assert!(
        matches!(&refused, Err(CaseError::Refused(message)) if message.contains("deferred")),
        "{refused:?}"
    );
    let resumed = case
        .execute(
            Command::Resume {
                by: "op".into(),
                note: "预算到位".into(),
            },
            at(1000),
            &CalendarTime,
        )
        .expect("resume");
    let CaseEvent::Resumed {
        deferred_for,
        assignments,
        ..
    } = &resumed[0].event
    else {
        panic!("not resumed")
    };
    assert_eq!(*deferred_for, Duration::minutes(990));
    // 20 of the 30 acknowledge minutes were left
    assert_eq!(assignments[0].acknowledge_by, at(1020));
    assert!(
        case.assignments
            .iter()
            .all(|a| a.flags.contains(&Flag::Deferred))
    );
    assert!(tick(&mut case, 1019).is_empty());
    assert_eq!(tick(&mut case, 1020).len(), 2, "both acknowledge clocks");
}

#[test]
fn every_assignment_returned_puts_the_case_back_in_the_street_queue() {
    let mut case = whistled_case();
    act(&mut case, 1, "a1", give_back());
    assert_eq!(case.status, CaseStatus::Whistled);
    act(&mut case, 2, "a2", give_back());
    assert_eq!(case.status, CaseStatus::Accepted);
    assert!(
        tick(&mut case, 10_000).is_empty(),
        "returned clocks never fire"
    );
}

#[test]
fn an_upheld_return_that_leaves_nobody_whistles_the_fallback_owner() {
    let mut case = whistled_case();
    act(&mut case, 1, "a1", give_back());
    act(&mut case, 2, "a2", give_back());
    let fallback = Fallback {
        target: target("a3", "zw-government", Role::Co),
        limits: Severity::Urgent.default_limits(),
        requires_on_site: true,
    };
    let decide = |case: &mut Case, id: &str, minute: i64, route: Vec<String>| {
        case.execute(
            Command::DecideReturn {
                by: "op".into(),
                assignment_id: id.into(),
                upheld: true,
                note: "确非职责".into(),
                route_departments: route,
                fallback: Some(fallback.clone()),
            },
            at(minute),
            &CalendarTime,
        )
        .expect("uphold")
    };
    // the route names a department not yet tried: the street re-whistles by hand
    let events = decide(
        &mut case,
        "a1",
        3,
        vec!["zw-sanitation".into(), "zw-housing".into()],
    );
    assert_eq!(events.len(), 1);
    assert_eq!(case.status, CaseStatus::Accepted);
    let events = decide(
        &mut case,
        "a2",
        4,
        vec!["zw-sanitation".into(), "zw-enforcement".into()],
    );
    assert!(matches!(
        &events[0].event,
        CaseEvent::ReturnDecided { upheld: true, fallback_department_code: Some(code), .. } if code == "zw-government"
    ));
    let CaseEvent::Whistled { assignment, .. } = &events[1].event else {
        panic!("fallback not whistled: {events:?}")
    };
    assert_eq!(assignment.role, Role::Lead);
    assert_eq!(case.status, CaseStatus::Whistled);
}

#[test]
fn a_rejected_return_sends_the_assignment_back_with_fresh_clocks_and_counts() {
    let mut case = whistled_case();
    act(&mut case, 1, "a1", acknowledge());
    act(&mut case, 2, "a1", give_back());
    act(&mut case, 3, "a2", give_back());
    assert_eq!(case.status, CaseStatus::Accepted);
    let events = case
        .execute(
            Command::DecideReturn {
                by: "op".into(),
                assignment_id: "a1".into(),
                upheld: false,
                note: "属于环卫职责".into(),
                route_departments: vec![],
                fallback: None,
            },
            at(100),
            &CalendarTime,
        )
        .expect("reject");
    let CaseEvent::ReturnDecided {
        assignment,
        upheld: false,
        ..
    } = &events[0].event
    else {
        panic!("{events:?}")
    };
    assert_eq!(assignment.status, AssignmentStatus::Whistled);
    assert_eq!(assignment.rejected_returns, 1);
    assert_eq!(assignment.acknowledged_at, None);
    assert_eq!(assignment.acknowledge_by, at(130), "fresh clocks");
    assert_eq!(case.status, CaseStatus::Whistled);
    // deciding twice is refused
    let twice = case.execute(
        Command::DecideReturn {
            by: "op".into(),
            assignment_id: "a1".into(),
            upheld: true,
            note: String::new(),
            route_departments: vec![],
            fallback: None,
        },
        at(101),
        &CalendarTime,
    );
    assert!(matches!(twice, Err(CaseError::Refused(_))), "{twice:?}");
}

#[test]
fn a_failed_verification_reworks_only_the_named_assignments() {
    let mut case = whistled_case();
    for id in ["a1", "a2"] {
        act(&mut case, 1, id, acknowledge());
        act(&mut case, 2, id, check_in());
        act(&mut case, 3, id, resolve());
    }
    assert_eq!(case.status, CaseStatus::AwaitingVerification);
    let unknown = case.execute(
        Command::Verify {
            by: "v".into(),
            passed: false,
            note: "x".into(),
            failed_assignment_ids: vec!["nope".into()],
        },
        at(4),
        &CalendarTime,
    );
    assert!(
        matches!(&unknown, Err(CaseError::Invalid { field, .. }) if field == "failed_assignment_ids[0]")
    );
    let events = case
        .execute(
            Command::Verify {
                by: "v".into(),
                passed: false,
                note: "路面仍有垃圾".into(),
                failed_assignment_ids: vec!["a1".into()],
            },
            at(60),
            &CalendarTime,
        )
        .expect("verify");
    let CaseEvent::Verified { verdicts, .. } = &events[0].event else {
        panic!("{events:?}")
    };
    assert_eq!(
        verdicts
            .iter()
            .map(|v| (v.assignment_id.as_str(), v.passed))
            .collect::<Vec<_>>(),
        vec![("a1", false), ("a2", true)]
    );
    assert!(matches!(
        &events[1].event,
        CaseEvent::Reopened { assignment_ids, .. } if assignment_ids == &vec!["a1".to_string()]
    ));
    assert_eq!(case.status, CaseStatus::Reopened);
    let a1 = case.assignment("a1").expect("a1");
    assert_eq!(a1.status, AssignmentStatus::OnSite);
    assert_eq!(a1.resolve_by, at(60 + 24 * 60), "the resolve limit again");
    assert_eq!(
        case.assignment("a2").expect("a2").status,
        AssignmentStatus::Resolved
    );
}

#[test]
fn a_pending_return_blocks_verification() {
    let mut case = whistled_case();
    act(&mut case, 1, "a1", acknowledge());
    act(&mut case, 2, "a1", check_in());
    act(&mut case, 3, "a1", resolve());
    act(&mut case, 4, "a2", give_back());
    assert_eq!(case.status, CaseStatus::AwaitingVerification);
    let refused = case.execute(
        Command::Verify {
            by: "v".into(),
            passed: true,
            note: String::new(),
            failed_assignment_ids: vec![],
        },
        at(5),
        &CalendarTime,
    );
    assert!(
        matches!(&refused, Err(CaseError::Refused(message)) if message.contains("a2")),
        "{refused:?}"
    );
}

#[test]
fn an_assignment_stored_before_clocks_decodes_and_gets_its_clocks() {
    // a row written by the previous version: no clocks, limits, decisions or supervision
    let stored = r#"{"assignment_id":"a1","case_id":"c1","department_code":"zw-sanitation","role":"Lead",
        "status":"Acknowledged","flags":[],"whistled_at":"2025-11-13T02:13:20Z",
        "acknowledge_by":"2025-11-13T02:43:20Z","on_site_by":"2025-11-13T04:13:20Z",
        "resolve_by":"2025-11-14T02:13:20Z","requires_on_site":true,
        "acknowledged_at":"2025-11-13T02:20:00Z","responsible_person":"王","contact_phone":"",
        "promised_at":null,"on_site_at":null,"resolved_at":null,"resolution":"","evidence":[],
        "returned_at":null,"return_reason":"","suggested_department_code":"","version":2}"#;
    let mut assignment: Assignment = serde_json::from_str(stored).expect("old rows decode");
    assert!(assignment.clocks.is_empty());
    assignment.upgrade();
    assert_eq!(
        assignment.limits().acknowledge_within,
        Duration::minutes(30)
    );
    let states: Vec<(ClockKind, bool)> = assignment
        .clocks
        .iter()
        .map(|clock| (clock.kind, clock.is_running()))
        .collect();
    assert_eq!(
        states,
        vec![
            (ClockKind::Acknowledge, false),
            (ClockKind::OnSite, true),
            (ClockKind::Resolve, true)
        ]
    );
    assert_eq!(
        assignment.clock(ClockKind::OnSite).expect("on site").due_at,
        assignment.on_site_by
    );
    let round_trip: Assignment =
        serde_json::from_str(&serde_json::to_string(&assignment).expect("encode")).expect("decode");
    assert_eq!(round_trip, assignment);
}

#[test]
fn the_stored_form_leaves_out_empty_fields_and_decodes_to_the_same_assignment() {
    let mut assignment = fresh(true);
    let stored = serde_json::to_string(&assignment).expect("encode");
    for empty in ["null", "[]", "\"\"", "false", "\"rejected_returns\""] {
        assert!(!stored.contains(empty), "{empty} in {stored}");
    }
    let decoded: Assignment = serde_json::from_str(&stored).expect("decode");
    assert_eq!(decoded, assignment);
    // a field at a value that is not its empty one is stored and comes back
    assignment.rejected_returns = 2;
    assignment.contact_phone = "138".into();
    assignment.evidence.push(evidence());
    assignment.clocks[0].extension_requested = true;
    let stored = serde_json::to_string(&assignment).expect("encode");
    let decoded: Assignment = serde_json::from_str(&stored).expect("decode");
    assert_eq!(decoded, assignment);
    // the long form, every field written out, still decodes: rows stored before
    let mut long = serde_json::to_value(&assignment).expect("value");
    let object = long.as_object_mut().expect("an object");
    object.insert("returned_at".into(), serde_json::Value::Null);
    object.insert("flags".into(), serde_json::json!([]));
    object.insert("resolution".into(), serde_json::json!(""));
    let decoded: Assignment = serde_json::from_value(long).expect("decode the long form");
    assert_eq!(decoded, assignment);
}

#[test]
fn geodesic_distance_is_sane() {
    // one degree of latitude near Shiyan is about 110.9 km
    let distance = distance_meters(32.0, 110.8, 33.0, 110.8);
    assert!((distance - 110_900.0).abs() < 300.0, "{distance}");
    assert!(distance_meters(LAT, LNG, LAT, LNG) < 0.001);
}

// ---- property tests of the aggregate ----

const DEPARTMENTS: [&str; 4] = ["d0", "d1", "d2", "d3"];

#[derive(Debug, Clone)]
enum Step {
    Advance(i64),
    Tick,
    Accept,
    Reject,
    Whistle(Vec<usize>),
    ResolveLocally,
    Verify(bool, Vec<usize>),
    DecideExtension(usize, bool),
    DecideReturn(usize, bool),
    Defer,
    Resume,
    Act(usize, u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0i64..90).prop_map(Step::Advance),
        4 => Just(Step::Tick),
        1 => Just(Step::Accept),
        1 => Just(Step::Reject),
        2 => proptest::collection::vec(0usize..4, 1..3).prop_map(Step::Whistle),
        1 => Just(Step::ResolveLocally),
        2 => (any::<bool>(), proptest::collection::vec(0usize..6, 0..2))
            .prop_map(|(passed, failed)| Step::Verify(passed, failed)),
        1 => (0usize..6, any::<bool>()).prop_map(|(index, approved)| Step::DecideExtension(index, approved)),
        2 => (0usize..6, any::<bool>()).prop_map(|(index, upheld)| Step::DecideReturn(index, upheld)),
        1 => Just(Step::Defer),
        1 => Just(Step::Resume),
        10 => (0usize..6, 0u8..7).prop_map(|(index, action)| Step::Act(index, action)),
    ]
}

fn short_limits() -> Limits {
    LimitOverrides {
        acknowledge_within: Some(Duration::minutes(30)),
        on_site_within: Some(Duration::minutes(60)),
        resolve_within: Some(Duration::minutes(120)),
        ..Default::default()
    }
    .apply(Severity::Urgent.default_limits())
}

/// The event kinds a command may emit when accepted, as a predicate over them.
fn events_fit(step: &Step, before: &Case, after: &Case, events: &[Emitted]) -> bool {
    use CaseEvent as E;
    let kinds_ok = |allowed: &dyn Fn(&CaseEvent) -> bool| events.iter().all(|e| allowed(&e.event));
    match step {
        Step::Advance(_) => events.is_empty(),
        Step::Tick => kinds_ok(&|e| matches!(e, E::Overdue { .. } | E::Escalated { .. })),
        Step::Accept => matches!(
            events,
            [Emitted {
                event: E::Accepted,
                ..
            }]
        ),
        Step::Reject => matches!(
            events,
            [Emitted {
                event: E::Rejected { .. },
                ..
            }]
        ),
        Step::Whistle(_) => {
            let issued = after.assignments.len() - before.assignments.len();
            let accepted = usize::from(before.status == CaseStatus::Reported);
            issued >= 1
                && events.len() == issued + accepted
                && events[accepted..]
                    .iter()
                    .all(|e| matches!(e.event, E::Whistled { .. }))
                && (accepted == 0 || matches!(events[0].event, E::Accepted))
        }
        Step::ResolveLocally => {
            matches!(
                events,
                [Emitted {
                    event: E::ResolvedLocally { .. },
                    ..
                }]
            )
        }
        Step::Verify(true, _) => matches!(
            events,
            [
                Emitted {
                    event: E::Verified { passed: true, .. },
                    ..
                },
                Emitted {
                    event: E::Closed,
                    ..
                }
            ]
        ),
        Step::Verify(false, _) => match events {
            [
                Emitted {
                    event: E::Verified { passed: false, .. },
                    ..
                },
            ] => after.status == CaseStatus::Accepted,
            [
                Emitted {
                    event: E::Verified { passed: false, .. },
                    ..
                },
                Emitted {
                    event: E::Reopened { assignment_ids, .. },
                    ..
                },
            ] => !assignment_ids.is_empty() && after.status == CaseStatus::Reopened,
            _ => false,
        },
        Step::DecideExtension(_, approved) => match events {
            [
                Emitted {
                    event: E::Extended { .. },
                    ..
                },
            ] => *approved,
            [
                Emitted {
                    event: E::ExtensionRefused { .. },
                    ..
                },
            ] => !*approved,
            _ => false,
        },
        Step::DecideReturn(_, upheld) => match events {
            [
                Emitted {
                    event:
                        E::ReturnDecided {
                            upheld: decided,
                            fallback_department_code: None,
                            ..
                        },
                    ..
                },
            ] => decided == upheld,
            [
                Emitted {
                    event:
                        E::ReturnDecided {
                            upheld: true,
                            fallback_department_code: Some(_),
                            ..
                        },
                    ..
                },
                Emitted {
                    event: E::Whistled { .. },
                    ..
                },
            ] => *upheld,
            _ => false,
        },
        Step::Defer => matches!(
            events,
            [Emitted {
                event: E::Deferred { .. },
                ..
            }]
        ),
        Step::Resume => matches!(
            events,
            [Emitted {
                event: E::Resumed { .. },
                ..
            }]
        ),
        Step::Act(_, action) => {
            let [emitted] = events else { return false };
            match (action, &emitted.event) {
                (0, E::Acknowledged { .. })
                | (1, E::CheckedIn { .. })
                | (2, E::Progressed { .. })
                | (3, E::Resolved { .. })
                | (4, E::Returned { .. })
                | (5, E::ExtensionRequested { .. }) => true,
                (6, _) => false,
                _ => false,
            }
        }
    }
}

/// What must hold of any case, whatever happened to it.
fn check_invariants(case: &Case) -> Result<(), TestCaseError> {
    let open = case.any_open();
    match case.status {
        CaseStatus::Reported | CaseStatus::Rejected => {
            prop_assert!(
                case.assignments.is_empty(),
                "{:?} with assignments",
                case.status
            )
        }
        CaseStatus::Whistled | CaseStatus::Reopened => {
            prop_assert!(open, "{:?} with nothing open", case.status)
        }
        CaseStatus::Accepted | CaseStatus::AwaitingVerification => {
            prop_assert!(!open, "{:?} with work open", case.status)
        }
        CaseStatus::Closed => {
            prop_assert!(!open, "closed with work open");
            prop_assert!(
                case.assignments.iter().all(|a| !a.return_pending()),
                "closed with a return undecided"
            );
        }
        CaseStatus::Merged => {}
    }
    if case.deferral.is_some() {
        prop_assert!(matches!(
            case.status,
            CaseStatus::Accepted | CaseStatus::Whistled | CaseStatus::Reopened
        ));
    }
    for assignment in &case.assignments {
        let mut kinds = BTreeSet::new();
        for clock in &assignment.clocks {
            prop_assert!(kinds.insert(clock.kind), "two clocks of one kind");
            prop_assert!(clock.escalated_at.is_none() || clock.overdue_at.is_some());
            prop_assert!(clock.escalate_at >= clock.due_at);
            let paused = matches!(clock.state, ClockState::Paused { .. });
            if case.deferral.is_some() {
                prop_assert!(
                    !clock.is_running(),
                    "a clock runs while the case is deferred"
                );
            } else {
                prop_assert!(!paused, "a clock stays paused after the deferral ended");
            }
            if !assignment.status.is_open() {
                prop_assert!(
                    !clock.is_running() && !paused,
                    "a clock of a {} assignment counts",
                    assignment.status.as_str()
                );
            }
            let shown = match clock.kind {
                ClockKind::Acknowledge => assignment.acknowledge_by,
                ClockKind::OnSite => assignment.on_site_by,
                ClockKind::Resolve => assignment.resolve_by,
            };
            prop_assert_eq!(shown, clock.due_at, "the shown deadline is the clock's");
        }
        prop_assert_eq!(
            kinds.contains(&ClockKind::OnSite),
            assignment.requires_on_site
        );
        match assignment.status {
            AssignmentStatus::Whistled => prop_assert!(assignment.acknowledged_at.is_none()),
            AssignmentStatus::Returned => prop_assert!(assignment.returned_at.is_some()),
            _ => prop_assert!(assignment.acknowledged_at.is_some()),
        }
        prop_assert_eq!(
            assignment.resolved_at.is_some(),
            assignment.status == AssignmentStatus::Resolved
        );
        if assignment.status == AssignmentStatus::OnSite {
            prop_assert!(assignment.on_site_at.is_some());
        }
        prop_assert!(assignment.evidence.len() <= rules().evidence_per_assignment);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of commands and clock ticks: the case never reaches an invalid state, a
    /// refused command changes nothing, an accepted one emits exactly its events (numbered by the
    /// case version), each step of each clock fires at most once and only from a running clock,
    /// and after a tick nothing due is left unfired.
    #[test]
    fn any_sequence_of_commands_and_ticks_keeps_the_case_valid(steps in proptest::collection::vec(step(), 1..60)) {
        let mut case = Case::reported("c1", 1, Severity::Urgent, LAT, LNG);
        let mut now = at(0);
        let mut next_id = 0u32;
        // clock instances: (assignment, kind) -> generation; restarted clocks get a new one
        let mut generation: BTreeMap<(String, ClockKind), u32> = BTreeMap::new();
        let mut fired: BTreeSet<(String, ClockKind, u32, &'static str)> = BTreeSet::new();
        for step in steps {
            let id_of = |case: &Case, index: usize| {
                case.assignments.get(index % case.assignments.len().max(1)).map(|a| a.assignment_id.clone()).unwrap_or_else(|| "none".into())
            };
            let command = match &step {
                Step::Advance(minutes) => {
                    now += Duration::minutes(*minutes);
                    continue;
                }
                Step::Tick => Command::Tick,
                Step::Accept => Command::Accept { by: "op".into() },
                Step::Reject => Command::Reject { by: "op".into(), reason: "r".into() },
                Step::Whistle(departments) => {
                    let targets = departments.iter().enumerate().map(|(position, index)| {
                        next_id += 1;
                        target(&format!("a{next_id}"), DEPARTMENTS[*index], if position == 0 { Role::Lead } else { Role::Co })
                    }).collect::<Vec<_>>();
                    // a whistle names each department once
                    let mut seen = BTreeSet::new();
                    let targets = targets.into_iter().filter(|t| seen.insert(t.department_code.clone())).collect();
                    Command::Whistle { by: "op".into(), targets, limits: short_limits(), requires_on_site: next_id.is_multiple_of(2) }
                }
                Step::ResolveLocally => Command::ResolveLocally { by: "community".into(), resolution: "自办".into() },
                Step::Verify(passed, failed) => Command::Verify {
                    by: "v".into(),
                    passed: *passed,
                    note: "n".into(),
                    failed_assignment_ids: failed.iter().map(|index| id_of(&case, *index)).collect(),
                },
                Step::DecideExtension(index, approved) => Command::DecideExtension {
                    by: "op".into(), assignment_id: id_of(&case, *index), approved: *approved, note: String::new(),
                },
                Step::DecideReturn(index, upheld) => {
                    next_id += 1;
                    Command::DecideReturn {
                        by: "op".into(),
                        assignment_id: id_of(&case, *index),
                        upheld: *upheld,
                        note: String::new(),
                        route_departments: vec!["d0".into(), "d1".into()],
                        fallback: Some(Fallback {
                            target: target(&format!("a{next_id}"), "fallback", Role::Lead),
                            limits: short_limits(),
                            requires_on_site: true,
                        }),
                    }
                }
                Step::Defer => Command::Defer { by: "op".into(), reason: "预算".into(), until: None },
                Step::Resume => Command::Resume { by: "op".into(), note: String::new() },
                Step::Act(index, action) => {
                    let assignment_id = id_of(&case, *index);
                    let department_code = case.assignment(&assignment_id).map(|a| a.department_code.clone()).unwrap_or_default();
                    let action = match action {
                        0 => acknowledge(),
                        1 => check_in(),
                        2 => DepartmentAction::Progress { note: "p".into(), evidence: vec![evidence(); 2] },
                        3 => resolve(),
                        4 => give_back(),
                        5 => DepartmentAction::RequestExtension { extra: Duration::minutes(60), reason: "r".into() },
                        _ => DepartmentAction::CheckIn { lat: LAT + 1.0, lng: LNG, person: "far".into() },
                    };
                    Command::Act { assignment_id, department_code, action, rules: rules() }
                }
            };
            let before = case.clone();
            let running: BTreeSet<(String, ClockKind)> = case.assignments.iter().flat_map(|a| {
                a.clocks.iter().filter(|c| c.is_running()).map(|c| (a.assignment_id.clone(), c.kind)).collect::<Vec<_>>()
            }).collect();
            match case.execute(command, now, &CalendarTime) {
                Err(_) => prop_assert_eq!(&case, &before, "a refused command changed the case"),
                Ok(events) => {
                    prop_assert!(events_fit(&step, &before, &case, &events), "{:?} emitted {:?}", step, events.iter().map(|e| &e.event).collect::<Vec<_>>());
                    prop_assert_eq!(case.version, before.version + events.len() as u64);
                    for (offset, emitted) in events.iter().enumerate() {
                        prop_assert_eq!(emitted.version, before.version + offset as u64 + 1);
                        prop_assert_eq!(emitted.at, now);
                        if let Some(assignment) = emitted.event.assignment() {
                            prop_assert_eq!(&assignment.case_id, &case.case_id);
                        }
                        match &emitted.event {
                            CaseEvent::Overdue { assignment, clock, due_at, .. } | CaseEvent::Escalated { assignment, clock, due_at, .. } => {
                                let key = (assignment.assignment_id.clone(), *clock);
                                prop_assert!(running.contains(&key), "{:?} fired from a clock that was not running", key);
                                prop_assert!(*due_at <= now, "fired before its deadline");
                                let step_name = if matches!(emitted.event, CaseEvent::Overdue { .. }) { "overdue" } else { "escalated" };
                                let instance = generation.get(&key).copied().unwrap_or(0);
                                prop_assert!(fired.insert((key.0, key.1, instance, step_name)), "{} fired twice for one clock", step_name);
                            }
                            CaseEvent::Extended { assignment, .. } => {
                                *generation.entry((assignment.assignment_id.clone(), ClockKind::Resolve)).or_default() += 1;
                            }
                            CaseEvent::Reopened { assignment_ids, .. } => {
                                for id in assignment_ids {
                                    *generation.entry((id.clone(), ClockKind::Resolve)).or_default() += 1;
                                }
                            }
                            CaseEvent::ReturnDecided { assignment, upheld: false, .. } => {
                                for kind in ClockKind::ALL {
                                    *generation.entry((assignment.assignment_id.clone(), kind)).or_default() += 1;
                                }
                            }
                            _ => {}
                        }
                    }
                    if matches!(step, Step::Tick) && case.deferral.is_none() {
                        for assignment in case.assignments.iter().filter(|a| a.status.is_open()) {
                            for (kind, step, due) in assignment.pending_steps() {
                                prop_assert!(due > now, "{:?} {:?} of {} due at {} left unfired at {}", kind, step, assignment.assignment_id, due, now);
                            }
                        }
                    }
                }
            }
            check_invariants(&case)?;
        }
    }
}

fn merged_report(report_id: &str) -> CaseReport {
    CaseReport {
        report_id: report_id.into(),
        reporter_id: "resident-88".into(),
        channel: 3,
        description: "又满了".into(),
        lat: LAT,
        lng: LNG,
        address: String::new(),
        observed_at: None,
        attachments: vec![evidence()],
        severity: 2,
    }
}

#[test]
fn a_merged_report_tells_each_open_assignment_once_and_changes_no_clock() {
    let mut case = whistled_case();
    act(&mut case, 5, "a2", acknowledge());
    act(
        &mut case,
        6,
        "a2",
        DepartmentAction::Return {
            reason: "not ours".into(),
            suggested_department_code: String::new(),
        },
    );
    let before = case.clone();
    let merge = || Command::MergeReport {
        report: merged_report("r-2"),
    };
    let events = case.execute(merge(), at(10), &CalendarTime).expect("merge");
    // the returned assignment is not open: only the lead is told
    assert_eq!(events.len(), 1);
    let CaseEvent::ReportMerged {
        assignment,
        report_count,
        ..
    } = &events[0].event
    else {
        panic!("not a merge notice: {events:?}")
    };
    assert_eq!(assignment.assignment_id, "a1");
    assert_eq!(*report_count, 2);
    assert_eq!(case.assignments, before.assignments);
    assert_eq!(case.next_due(), before.next_due());
    assert_eq!(case.status, before.status);
    // again: nothing
    assert!(
        case.execute(merge(), at(11), &CalendarTime)
            .expect("again")
            .is_empty()
    );
    assert_eq!(case.merged_reports.len(), 1);
    // split: gone, no notice
    let split = case
        .execute(
            Command::SplitReport {
                report_id: "r-2".into(),
            },
            at(12),
            &CalendarTime,
        )
        .expect("split");
    assert!(split.is_empty());
    assert!(case.merged_reports.is_empty());
}

#[test]
fn recurrence_and_evidence_tell_open_assignments() {
    let mut case = whistled_case();
    let flagged = case
        .execute(
            Command::MarkRecurrent {
                earlier_case_ids: vec!["old-1".into()],
            },
            at(1),
            &CalendarTime,
        )
        .expect("recurrent");
    assert_eq!(flagged.len(), 2);
    assert!(case.recurrent);
    let attached = case
        .execute(
            Command::AttachEvidence {
                attached_by: "420303003001".into(),
                by_community: true,
                attachments: vec![evidence()],
            },
            at(2),
            &CalendarTime,
        )
        .expect("evidence");
    assert_eq!(attached.len(), 2);
    assert_eq!(case.evidence, vec![evidence()]);
    // a case nobody works on keeps the news and tells no one
    let mut reported = Case::reported("c2", 1, Severity::Routine, LAT, LNG);
    let none = reported
        .execute(
            Command::MarkRecurrent {
                earlier_case_ids: vec!["old-1".into()],
            },
            at(1),
            &CalendarTime,
        )
        .expect("recurrent");
    assert!(none.is_empty());
    assert!(reported.recurrent);
    assert_eq!(reported.version, 1);
}
