//! Department actions written in batches (`whistle_dispatch::actions`) against real databases: the
//! same script of actions, applied one per transaction to one database and in batches of several
//! to another, answers every action alike and leaves the same rows (cases, assignments, clocks,
//! timeline, outbox events, action ids). The script mixes in what a batch must keep apart: two or
//! three departments of one case acting together, an id repeated within a batch and across
//! batches, an id reused for another assignment, another department's assignment, an unknown
//! assignment, and actions the case refuses.

mod common;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder, TransactionTrait};
use whistle_dispatch::actions::{ActionRequest, RecordedAction, record_department_actions};
use whistle_dispatch::domain::{ActionRules, CalendarTime, DepartmentAction};
use whistle_dispatch::error::DispatchError;
use whistle_dispatch::storage;
use whistle_platform::ManualClock;
use whistle_platform::envelope::{self, Payload};
use whistle_platform::errors::ServiceError;
use whistle_platform::testing::TestPostgres;
use whistle_proto::events::CaseReported;
use whistle_proto::types::{Channel, Place, Severity};

use common::GRID;
const LAT: f64 = 32.637;
const LNG: f64 = 110.797;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).expect("time")
}

const RULES: ActionRules = ActionRules {
    check_in_radius_meters: 500.0,
    evidence_per_assignment: 20,
};

/// A fresh database with the demo routes and `cases` cases reported in the garbage-overflow route
/// (three departments each), under the same ids in every database.
async fn database(url: String, case_ids: &[String]) -> DatabaseConnection {
    let database = common::routed_database(url, 2).await;
    let clock = ManualClock::new(now());
    for (index, case_id) in case_ids.iter().enumerate() {
        let reported = CaseReported {
            report_id: format!("report-{index}"),
            channel: Channel::GridPatrol as i32,
            reporter_id: "grid-worker-17".into(),
            category_code: "E-01-03".into(),
            severity: Severity::Routine as i32,
            description: "垃圾满溢".into(),
            place: Some(Place {
                grid_code: GRID.into(),
                lat: LAT,
                lng: LNG,
                address: "永福花园".into(),
            }),
            attachments: vec![],
            observed_at: None,
        };
        let mut event = envelope::new_event(
            &clock,
            "whistle-intake",
            case_id,
            1,
            Some(common::region()),
            Payload::CaseReported(reported.clone()),
        );
        event.event_id = format!("reported-{index}");
        let transaction = database.begin().await.expect("transaction");
        whistle_dispatch::service::open_reported_case(
            &transaction,
            now(),
            &CalendarTime,
            &event,
            &reported,
        )
        .await
        .expect("case opened");
        transaction.commit().await.expect("commit");
    }
    database
}

/// Each case's assignments as (department, assignment id), by department.
async fn assignments(database: &DatabaseConnection) -> Vec<Vec<(String, String)>> {
    let rows = storage::assignment::Entity::find()
        .order_by_asc(storage::assignment::Column::CaseId)
        .order_by_asc(storage::assignment::Column::DepartmentCode)
        .all(database)
        .await
        .expect("assignments");
    let mut cases: Vec<Vec<(String, String)>> = Vec::new();
    let mut last = String::new();
    for row in rows {
        if row.case_id != last {
            cases.push(Vec::new());
            last = row.case_id.clone();
        }
        cases
            .last_mut()
            .expect("a case")
            .push((row.department_code, row.assignment_id));
    }
    cases
}

fn acknowledge() -> DepartmentAction {
    DepartmentAction::Acknowledge {
        responsible_person: "负责人".into(),
        contact_phone: String::new(),
        promised_at: None,
    }
}

fn check_in(lat: f64) -> DepartmentAction {
    DepartmentAction::CheckIn {
        lat,
        lng: LNG,
        person: "王".into(),
    }
}

fn resolve() -> DepartmentAction {
    DepartmentAction::Resolve {
        resolution: "已清运".into(),
        evidence: vec![],
    }
}

fn request(
    action_id: &str,
    assignment: &(String, String),
    action: DepartmentAction,
) -> ActionRequest {
    ActionRequest {
        action_id: action_id.into(),
        assignment_id: assignment.1.clone(),
        department_code: assignment.0.clone(),
        action,
        traceparent: None,
    }
}

/// The script: every department of every case acknowledges, checks in and resolves, rounds
/// interleaved across cases, with the awkward requests mixed in. Assignment ids differ between
/// databases (they are made when whistled), so the script is built from each database's own.
fn script(cases: &[Vec<(String, String)>]) -> Vec<ActionRequest> {
    let mut script = Vec::new();
    type Round = (&'static str, fn() -> DepartmentAction);
    let rounds: [Round; 3] = [
        ("ack", acknowledge),
        ("in", || check_in(LAT + 0.0001)),
        ("done", resolve),
    ];
    for (round, (name, action)) in rounds.iter().enumerate() {
        for (case, assignments) in cases.iter().enumerate() {
            for (department, assignment) in assignments.iter().enumerate() {
                let id = format!("{name}-{case}-{department}");
                if round == 1 && department == 0 {
                    // refused: too far from the case's place (the id stays free)
                    script.push(request(&id, assignment, check_in(LAT + 0.05)));
                }
                if round == 2 && department == 1 {
                    // the second resolve, under a new id, is refused: already resolved
                    script.push(request(&id, assignment, action()));
                    script.push(request(&format!("{id}-again"), assignment, action()));
                    continue;
                }
                script.push(request(&id, assignment, action()));
                if department == 2 {
                    // a retry of the same request, in the same batch or the next
                    script.push(request(&id, assignment, action()));
                }
            }
        }
    }
    let first = &cases[0][0];
    let second = &cases[0][1];
    // an id of zw-sanitation reused on another of its assignments
    script.push(request("ack-0-0", &cases[1][0], acknowledge()));
    // a department acting on an assignment not addressed to it
    script.push(request(
        "foreign",
        &(second.0.clone(), first.1.clone()),
        acknowledge(),
    ));
    // an assignment that does not exist
    script.push(request(
        "nowhere",
        &(first.0.clone(), "no-such-assignment".into()),
        acknowledge(),
    ));
    // an earlier id, repeated long after
    script.push(request("ack-0-0", first, acknowledge()));
    script
}

/// An outcome as compared across databases: the assignment's status and version with whether it
/// was a repeat, or the error's code and message (assignment ids replaced by their place).
fn outcome(result: &Result<RecordedAction, DispatchError>, names: &[(String, String)]) -> String {
    let rename = |text: String| {
        names
            .iter()
            .fold(text, |text, (id, name)| text.replace(id.as_str(), name))
    };
    match result {
        Ok(recorded) => format!(
            "{} v{} {:?} repeated={}",
            recorded.assignment.department_code,
            recorded.assignment.version,
            recorded.assignment.status,
            recorded.repeated
        ),
        Err(error) => rename(format!("{:?}: {error}", error.error_code())),
    }
}

/// The rows the actions leave, with assignment ids replaced by their place in the case.
async fn rows(database: &DatabaseConnection, names: &[(String, String)]) -> Vec<String> {
    let rename = |text: String| {
        names
            .iter()
            .fold(text, |text, (id, name)| text.replace(id.as_str(), name))
    };
    let mut rows = Vec::new();
    for case in storage::case::Entity::find()
        .all(database)
        .await
        .expect("cases")
    {
        rows.push(format!(
            "case {} {} v{} {}",
            case.case_id, case.status, case.version, case.state
        ));
    }
    for assignment in storage::assignment::Entity::find()
        .all(database)
        .await
        .expect("assignments")
    {
        rows.push(rename(format!(
            "assignment {} {} v{} overdue={} {}",
            assignment.assignment_id,
            assignment.status,
            assignment.version,
            assignment.overdue,
            assignment.state
        )));
    }
    for clock in storage::clock::Entity::find()
        .all(database)
        .await
        .expect("clocks")
    {
        rows.push(rename(format!(
            "clock {} {} {} {}",
            clock.assignment_id, clock.clock, clock.step, clock.due_at_ms
        )));
    }
    for entry in storage::timeline::Entity::find()
        .all(database)
        .await
        .expect("timeline")
    {
        rows.push(rename(format!(
            "timeline {} {} {} {} {} {}",
            entry.case_id, entry.at_ms, entry.kind, entry.actor, entry.assignment_id, entry.detail
        )));
    }
    for action in storage::action::Entity::find()
        .all(database)
        .await
        .expect("actions")
    {
        rows.push(rename(format!(
            "action {} {} {} {}",
            action.department_code, action.action_id, action.assignment_id, action.kind
        )));
    }
    for event in whistle_platform::outbox::entity::Entity::find()
        .all(database)
        .await
        .expect("outbox")
    {
        let decoded = envelope::decode(&event.payload).expect("event");
        let kind = decoded
            .payload
            .as_ref()
            .map(|payload| envelope::kind(payload).label())
            .unwrap_or_default();
        rows.push(rename(format!(
            "event {} {} v{} {}",
            event.subject, decoded.case_id, decoded.case_version, kind
        )));
    }
    rows.sort();
    rows
}

/// Applies `script` in batches of `size`, each in its own transaction; every outcome in order.
async fn apply(
    database: &DatabaseConnection,
    script: &[ActionRequest],
    size: usize,
) -> Vec<Result<RecordedAction, DispatchError>> {
    let mut outcomes = Vec::new();
    for batch in script.chunks(size) {
        let transaction = database.begin().await.expect("transaction");
        outcomes.extend(
            record_department_actions(&transaction, now(), &CalendarTime, RULES, batch)
                .await
                .expect("the batch as a whole is written"),
        );
        transaction.commit().await.expect("commit");
    }
    outcomes
}

async fn batches_answer_and_write_as_one_action_at_a_time(postgres: bool) {
    let bed = tempfile::tempdir().expect("folder");
    let case_ids: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let mut databases = Vec::new();
    let mut keep = Vec::new();
    for name in ["alone", "batched"] {
        let url = if postgres {
            let database = TestPostgres::create().await;
            let url = database.url.clone();
            keep.push(database);
            url
        } else {
            format!(
                "sqlite://{}",
                bed.path().join(format!("{name}.sqlite")).display()
            )
        };
        databases.push(database(url, &case_ids).await);
    }
    let mut answers = Vec::new();
    let mut written = Vec::new();
    for (database, size) in databases.iter().zip([1, 7]) {
        let cases = assignments(database).await;
        assert_eq!(cases.len(), 5, "every case whistled");
        assert!(
            cases.iter().all(|case| case.len() == 3),
            "three departments each"
        );
        let names: Vec<(String, String)> = cases
            .iter()
            .enumerate()
            .flat_map(|(case, assignments)| {
                assignments
                    .iter()
                    .enumerate()
                    .map(move |(department, (_, id))| (id.clone(), format!("A{case}.{department}")))
            })
            .collect();
        let script = script(&cases);
        let outcomes = apply(database, &script, size).await;
        answers.push(
            outcomes
                .iter()
                .map(|result| outcome(result, &names))
                .collect::<Vec<_>>(),
        );
        written.push(rows(database, &names).await);
    }
    let (alone, batched) = (&answers[0], &answers[1]);
    // the script's awkward requests answer as they should
    let count = |prefix: &str| {
        alone
            .iter()
            .filter(|answer| answer.starts_with(prefix))
            .count()
    };
    assert_eq!(
        count("BadRequest: action_id: already used for acknowledge"),
        1,
        "{alone:#?}"
    );
    assert_eq!(count("PermissionDenied"), 1, "{alone:#?}");
    assert_eq!(count("NotFound"), 1, "{alone:#?}");
    assert_eq!(count("BadRequest"), 1, "{alone:#?}");
    assert_eq!(
        count("FailedPrecondition: cannot check in"),
        5,
        "far check-ins refused: {alone:#?}"
    );
    assert_eq!(
        count("FailedPrecondition: cannot resolve"),
        5,
        "second resolves refused: {alone:#?}"
    );
    let repeats = alone
        .iter()
        .filter(|answer| answer.ends_with("repeated=true"))
        .count();
    assert_eq!(
        repeats,
        5 * 3 + 1,
        "each retry and the late repeat: {alone:#?}"
    );
    let resolved = alone
        .iter()
        .filter(|answer| answer.contains("Resolved") && answer.ends_with("repeated=false"))
        .count();
    assert_eq!(resolved, 15, "every department resolved once: {alone:#?}");
    assert_eq!(alone, batched, "batches answer as single actions do");
    assert_eq!(
        written[0], written[1],
        "batches leave the rows single actions leave"
    );
    for database in databases {
        database.close().await.expect("close");
    }
    for database in keep {
        database.drop_database().await;
    }
}

#[tokio::test]
async fn batches_answer_and_write_as_one_action_at_a_time_on_sqlite() {
    batches_answer_and_write_as_one_action_at_a_time(false).await;
}

#[tokio::test]
async fn batches_answer_and_write_as_one_action_at_a_time_on_postgres() {
    batches_answer_and_write_as_one_action_at_a_time(true).await;
}
