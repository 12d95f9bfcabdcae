//! A generated history of cases as dispatch and intake publish it, for the rebuild test and the
//! rebuild measurement (`cargo run -p whistle-evaluation --example rebuild_time`): whistles,
//! acknowledgements, check-ins, resolutions, returns and the street's decisions, verifications
//! with per-assignment verdicts, closes, overdue clocks and escalations, over October and
//! November 2026, in several communities of 车城路街道. Deterministic for a seed.

#![allow(dead_code)]

use async_nats::jetstream;
use whistle_platform::ManualClock;
use whistle_platform::clock::{from_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_proto::events::{
    AssignmentAcknowledged, AssignmentCheckedIn, AssignmentOverdue, AssignmentResolved,
    AssignmentReturnDecided, AssignmentReturned, AssignmentVerdict, CaseClosed, CaseEscalated,
    CaseReported, CaseVerified, WhistleIssued,
};
use whistle_proto::types::{
    Assignment, AssignmentFlag, AssignmentRole, AssignmentStatus, Deadlines, Region,
};

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;
/// 2026-10-01T00:00:00+08:00.
pub const OCTOBER: i64 = 1_790_784_000_000;
/// 2026-11-01T00:00:00+08:00.
pub const NOVEMBER: i64 = OCTOBER + 31 * DAY;
/// 2026-11-20T12:00:00+08:00: the services' clock, after every generated event.
pub const NOW: i64 = NOVEMBER + 19 * DAY + 12 * HOUR;
pub const STREET: &str = "420303003";
pub const COMMUNITIES: [&str; 4] = [
    "420303003001",
    "420303003002",
    "420303003003",
    "420303003004",
];
pub const DEPARTMENTS: [&str; 6] = [
    "zw-sanitation",
    "zw-enforcement",
    "zw-housing",
    "zw-traffic-police",
    "zw-fire-rescue",
    "pm-jinding",
];

/// A small deterministic generator (SplitMix64), so a failing history can be replayed.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            items.swap(index, other);
        }
    }
}

fn at(millis: i64) -> Option<prost_types::Timestamp> {
    Some(to_proto_timestamp(from_millis(millis)))
}

pub fn region(community: &str) -> Region {
    Region {
        city_code: "420300".into(),
        district_code: "420303".into(),
        street_code: STREET.into(),
        street_slug: "chechenglu".into(),
        community_code: community.into(),
        grid_code: format!("{community}001"),
    }
}

fn event(case_id: &str, version: u64, community: &str, at_ms: i64, payload: Payload) -> Event {
    envelope::new_event(
        &ManualClock::new(from_millis(at_ms)),
        "whistle-dispatch",
        case_id,
        version,
        Some(region(community)),
        payload,
    )
}

/// One generated case: its id, community, assignments (id, department) and events.
pub struct GeneratedCase {
    pub case_id: String,
    pub community: String,
    pub assignments: Vec<(String, String)>,
    /// Closed after a passed verification: call-backs may be recorded.
    pub closed: bool,
    pub events: Vec<Event>,
}

/// Generates `cases` cases, half whistled in October and half in November 2026.
pub fn generate(cases: usize, seed: u64) -> Vec<GeneratedCase> {
    let mut dice = Dice::new(seed);
    (0..cases)
        .map(|index| generate_case(index, &mut dice))
        .collect()
}

fn generate_case(index: usize, dice: &mut Dice) -> GeneratedCase {
    let case_id = format!("case-{seed:06}", seed = index);
    let community = COMMUNITIES[dice.below(COMMUNITIES.len() as u64) as usize];
    let month = if index.is_multiple_of(2) {
        OCTOBER
    } else {
        NOVEMBER
    };
    // within the first 18 days of the month, so every clock has passed by NOW
    let whistled_at = month + dice.below(18 * DAY as u64 / MINUTE as u64) as i64 * MINUTE;
    let mut version = 1;
    let mut events = vec![event(
        &case_id,
        0,
        community,
        whistled_at - 10 * MINUTE,
        Payload::CaseReported(CaseReported {
            report_id: format!("report-{index}"),
            category_code: "E-01-03".into(),
            description: "generated".into(),
            ..CaseReported::default()
        }),
    )];
    let lead = DEPARTMENTS[dice.below(DEPARTMENTS.len() as u64) as usize];
    let mut departments = vec![(lead, AssignmentRole::Lead)];
    if dice.chance(40) {
        let co = DEPARTMENTS[dice.below(DEPARTMENTS.len() as u64) as usize];
        if co != lead {
            departments.push((co, AssignmentRole::Co));
        }
    }
    let mut assignments = Vec::new();
    let mut verdicts = Vec::new();
    let mut resolved_at_latest = whistled_at;
    for (position, (department, role)) in departments.into_iter().enumerate() {
        let assignment_id = format!("{case_id}-a{position}");
        let mut assignment = Assignment {
            assignment_id: assignment_id.clone(),
            case_id: case_id.clone(),
            department_code: department.into(),
            role: role as i32,
            status: AssignmentStatus::Whistled as i32,
            whistled_at: at(whistled_at),
            deadlines: Some(Deadlines {
                acknowledge_by: at(whistled_at + 2 * HOUR),
                on_site_by: at(whistled_at + 24 * HOUR),
                resolve_by: at(whistled_at + 7 * DAY),
            }),
            requires_on_site: dice.chance(60),
            version: 1,
            ..Assignment::default()
        };
        assignments.push((assignment_id.clone(), department.to_string()));
        let mut push = |assignment: &Assignment, at_ms: i64, payload: Payload| {
            version += 1;
            let _ = assignment;
            events.push(event(&case_id, version, community, at_ms, payload));
        };
        push(
            &assignment,
            whistled_at,
            Payload::WhistleIssued(WhistleIssued {
                assignment: Some(assignment.clone()),
                category_code: "E-01-03".into(),
                whistled_by: "chechenglu-dispatch".into(),
                ..WhistleIssued::default()
            }),
        );
        // some return the case with a reason; the street upholds or rejects the return
        if dice.chance(10) {
            let returned_at = whistled_at + dice.below(4 * HOUR as u64) as i64;
            assignment.status = AssignmentStatus::Returned as i32;
            assignment.returned_at = at(returned_at);
            assignment.version += 1;
            push(
                &assignment,
                returned_at,
                Payload::AssignmentReturned(AssignmentReturned {
                    assignment: Some(assignment.clone()),
                }),
            );
            let upheld = dice.chance(50);
            assignment.version += 1;
            push(
                &assignment,
                returned_at + HOUR,
                Payload::AssignmentReturnDecided(AssignmentReturnDecided {
                    assignment: Some(assignment.clone()),
                    upheld,
                    decided_by: "chechenglu-dispatch".into(),
                    ..AssignmentReturnDecided::default()
                }),
            );
            continue;
        }
        let acknowledged_at = whistled_at + dice.below(4 * HOUR as u64) as i64;
        assignment.status = AssignmentStatus::Acknowledged as i32;
        assignment.acknowledged_at = at(acknowledged_at);
        assignment.version += 1;
        push(
            &assignment,
            acknowledged_at,
            Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                assignment: Some(assignment.clone()),
                within_limit: acknowledged_at <= whistled_at + 2 * HOUR,
            }),
        );
        if acknowledged_at > whistled_at + 2 * HOUR && dice.chance(50) {
            assignment.version += 1;
            push(
                &assignment,
                whistled_at + 2 * HOUR,
                Payload::AssignmentOverdue(AssignmentOverdue {
                    assignment: Some(assignment.clone()),
                    flag: AssignmentFlag::AckOverdue as i32,
                    due_at: at(whistled_at + 2 * HOUR),
                    ..AssignmentOverdue::default()
                }),
            );
            if dice.chance(50) {
                push(
                    &assignment,
                    whistled_at + 3 * HOUR,
                    Payload::CaseEscalated(CaseEscalated {
                        assignment_id: assignment_id.clone(),
                        department_code: department.into(),
                        supervisor_code: "zw-supervision".into(),
                        reason: "逾期未签收".into(),
                        ..CaseEscalated::default()
                    }),
                );
            }
        }
        if assignment.requires_on_site && dice.chance(90) {
            let on_site_at = acknowledged_at + dice.below(30 * HOUR as u64) as i64;
            assignment.status = AssignmentStatus::OnSite as i32;
            assignment.on_site_at = at(on_site_at);
            assignment.version += 1;
            push(
                &assignment,
                on_site_at,
                Payload::AssignmentCheckedIn(AssignmentCheckedIn {
                    assignment: Some(assignment.clone()),
                    within_limit: on_site_at <= whistled_at + 24 * HOUR,
                    distance_meters: 20.0,
                }),
            );
        }
        if dice.chance(85) {
            let resolved_at = acknowledged_at + dice.below(9 * DAY as u64) as i64;
            resolved_at_latest = resolved_at_latest.max(resolved_at);
            assignment.status = AssignmentStatus::Resolved as i32;
            assignment.resolved_at = at(resolved_at);
            assignment.version += 1;
            push(
                &assignment,
                resolved_at,
                Payload::AssignmentResolved(AssignmentResolved {
                    assignment: Some(assignment.clone()),
                    within_limit: resolved_at <= whistled_at + 7 * DAY,
                }),
            );
            verdicts.push(AssignmentVerdict {
                assignment_id: assignment_id.clone(),
                department_code: department.into(),
                passed: dice.chance(85),
            });
        }
    }
    let mut closed = false;
    if !verdicts.is_empty() {
        let passed = verdicts.iter().all(|verdict| verdict.passed);
        version += 1;
        events.push(event(
            &case_id,
            version,
            community,
            resolved_at_latest + HOUR,
            Payload::CaseVerified(CaseVerified {
                verified_by: community.into(),
                passed,
                note: String::new(),
                verdicts,
            }),
        ));
        if passed {
            version += 1;
            events.push(event(
                &case_id,
                version,
                community,
                resolved_at_latest + 2 * HOUR,
                Payload::CaseClosed(CaseClosed {}),
            ));
            closed = true;
        }
    }
    GeneratedCase {
        case_id,
        community: community.to_string(),
        assignments,
        closed,
        events,
    }
}

/// Every event of the history, shuffled, with `redelivered_percent` of them published twice
/// under another message id (JetStream keeps both: a real redelivery for the consumers).
pub fn shuffled_with_redeliveries(
    cases: &[GeneratedCase],
    redelivered_percent: u64,
    seed: u64,
) -> Vec<(Event, String)> {
    let mut dice = Dice::new(seed);
    let mut messages = Vec::new();
    for case in cases {
        for event in &case.events {
            messages.push((event.clone(), event.event_id.clone()));
            if dice.chance(redelivered_percent) {
                messages.push((event.clone(), format!("{}-again", event.event_id)));
            }
        }
    }
    dice.shuffle(&mut messages);
    messages
}

/// Publishes like the outbox relay (CloudEvents headers, `Nats-Msg-Id`), many in flight at once.
pub async fn publish_all(jetstream: &jetstream::Context, messages: &[(Event, String)]) {
    for chunk in messages.chunks(1_000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (event, message_id) in chunk {
            let outbox = envelope::to_outbox(event).expect("envelope");
            let headers = whistle_platform::outbox::headers_for(message_id, &outbox.headers);
            acks.push(
                jetstream
                    .publish_with_headers(outbox.subject, headers, outbox.payload.into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("jetstream ack");
        }
    }
}
