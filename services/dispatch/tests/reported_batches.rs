//! The case consumer opens a batch's reported cases together (`ReportedCases`: one read of what
//! they need, in memory, saved together before the commit). Against real databases, the same
//! script of intake's events applied one event per transaction with the per-case functions, and
//! through the consumer in batches of several, must leave the same rows: cases, assignments,
//! clocks, timeline (in the same order per case), events and news kept pending. The script mixes
//! in what a batch must keep apart: news right after its case.reported (in memory), news ahead
//! of it in the batch and in an earlier batch (kept pending, applied when the case opens), a case
//! reported twice in one batch and again in a later one, news repeated, a category without a
//! route, a route that does not whistle at once, and a route whistling three departments. And the
//! race between two replicas that strands news (kept pending for a case another replica was
//! opening), which the scanner's sweep applies, once.

mod common;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder, TransactionTrait};
use std::sync::Arc;
use whistle_dispatch::consumer::ReportedCases;
use whistle_dispatch::domain::CalendarTime;
use whistle_dispatch::storage;
use whistle_platform::ManualClock;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::inbox::{BatchEvent, EventHandler, HandleError};
use whistle_platform::outbox::{self, OutboxSignal};
use whistle_platform::testing::TestPostgres;
use whistle_proto::events::{CaseEvidenceAttached, CaseMerged, CaseRecurrent, CaseReported};
use whistle_proto::types::{Attachment, Channel, Place, Severity};

use common::GRID;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).expect("time")
}

fn event(id: &str, case_id: &str, payload: Payload) -> Event {
    let mut event = envelope::new_event(
        &ManualClock::new(now()),
        "whistle-intake",
        case_id,
        1,
        Some(common::region()),
        payload,
    );
    event.event_id = id.to_string();
    event
}

fn place() -> Option<Place> {
    Some(Place {
        grid_code: GRID.into(),
        lat: 32.637,
        lng: 110.797,
        address: "永福花园".into(),
    })
}

fn reported(id: &str, case_id: &str, category: &str) -> Event {
    event(
        id,
        case_id,
        Payload::CaseReported(CaseReported {
            report_id: format!("report-{case_id}"),
            channel: Channel::GridPatrol as i32,
            reporter_id: "grid-worker-17".into(),
            category_code: category.into(),
            severity: Severity::Routine as i32,
            description: format!("{category} at {case_id}"),
            place: place(),
            attachments: vec![],
            observed_at: None,
        }),
    )
}

fn recurrent(id: &str, case_id: &str) -> Event {
    event(
        id,
        case_id,
        Payload::CaseRecurrent(CaseRecurrent {
            earlier_case_ids: vec!["case-earlier-1".into(), "case-earlier-2".into()],
            threshold: 2,
            window_days: 30,
            distance_meters: 100.0,
        }),
    )
}

fn evidence(id: &str, case_id: &str, photo: &str) -> Event {
    event(
        id,
        case_id,
        Payload::CaseEvidenceAttached(CaseEvidenceAttached {
            attached_by: "resident-3".into(),
            by_community: false,
            attachments: vec![Attachment {
                uri: format!("https://photos.example/{photo}.jpg"),
                sha256: "ab".repeat(32),
                media_type: "image/jpeg".into(),
                size_bytes: 1024,
            }],
            evidence_count: 1,
        }),
    )
}

fn merged(id: &str, case_id: &str) -> Event {
    event(
        id,
        case_id,
        Payload::CaseMerged(CaseMerged {
            report_id: format!("report-merged-{id}"),
            merged_into_case_id: case_id.into(),
            channel: Channel::ResidentApp as i32,
            reporter_id: "resident-8".into(),
            category_code: "E-01-03".into(),
            severity: Severity::Urgent as i32,
            description: "又满了".into(),
            place: place(),
            attachments: vec![],
            observed_at: None,
            distance_meters: 12.0,
            report_count: 2,
        }),
    )
}

/// Intake's events, in stream order.
fn script() -> Vec<Event> {
    vec![
        reported("e01", "case-00", "E-01-03"),
        reported("e02", "case-01", "C-01-01"),
        recurrent("e03", "case-01"),
        evidence("e04", "case-05", "p1"),
        reported("e05", "case-02", "Z-99-99"),
        reported("e06", "case-01", "C-01-01"),
        reported("e07", "case-05", "E-06-01"),
        merged("e08", "case-00"),
        evidence("e09", "case-10", "p2"),
        reported("e10", "case-03", "E-01-03"),
        recurrent("e11", "case-99"),
        reported("e12", "case-04", "E-01-03"),
        evidence("e13", "case-04", "p3"),
        evidence("e14", "case-04", "p3"),
        reported("e15", "case-00", "E-01-03"),
        reported("e16", "case-10", "E-04-09"),
        evidence("e17", "case-10", "p4"),
        reported("e18", "case-06", "E-01-02"),
        merged("e19", "case-06"),
        recurrent("e20", "case-06"),
        reported("e21", "case-07", "E-05-07"),
    ]
}

/// The reference: each event in its own transaction, through the per-case functions.
async fn apply_one_by_one(database: &DatabaseConnection, events: &[Event]) {
    for event in events {
        let transaction = database.begin().await.expect("transaction");
        match &event.payload {
            Some(Payload::CaseReported(reported)) => {
                whistle_dispatch::service::open_reported_case(
                    &transaction,
                    now(),
                    &CalendarTime,
                    event,
                    reported,
                )
                .await
                .expect("opened");
            }
            _ => {
                whistle_dispatch::service::apply_report_news(
                    &transaction,
                    now(),
                    &CalendarTime,
                    event,
                )
                .await
                .expect("news applied");
            }
        }
        transaction.commit().await.expect("commit");
    }
}

/// Through the consumer, `size` events per batch, as the inbox runs a batch.
async fn apply_in_batches(database: &DatabaseConnection, events: &[Event], size: usize) {
    let handler = ReportedCases::new(
        Arc::new(ManualClock::new(now())),
        Arc::new(CalendarTime),
        OutboxSignal::default(),
    );
    let subject = "case.v1.test";
    for batch in events.chunks(size) {
        let transaction = database.begin().await.expect("transaction");
        let batch_events: Vec<BatchEvent<'_>> = batch
            .iter()
            .map(|event| BatchEvent { subject, event })
            .collect();
        handler
            .before_batch(&transaction, &batch_events)
            .await
            .expect("batch read");
        for event in batch {
            handler
                .handle(&transaction, subject, event)
                .await
                .unwrap_or_else(|error| panic!("{}: {error}", event.event_id));
        }
        handler.before_commit(&transaction).await.expect("saved");
        transaction.commit().await.expect("commit");
    }
}

/// Everything dispatch stored, without the assignment ids (new UUIDs in each run).
#[derive(Debug, PartialEq)]
struct Stored {
    cases: Vec<storage::case::Model>,
    /// (case, department, status, version, deadlines, overdue)
    assignments: Vec<(String, String, String, i64, [i64; 4], bool)>,
    /// (case, department, clock, step, due at)
    clocks: Vec<(String, String, String, String, i64)>,
    /// (case, at, kind, actor, detail), in the order written per case
    timeline: Vec<(String, i64, String, String, String)>,
    /// (case, subject) of each event in the outbox, in the order written per case
    events: Vec<(String, String)>,
    pending: Vec<(String, String)>,
}

async fn stored(database: &DatabaseConnection) -> Stored {
    let cases = storage::case::Entity::find()
        .order_by_asc(storage::case::Column::CaseId)
        .all(database)
        .await
        .expect("cases");
    let assignment_rows = storage::assignment::Entity::find()
        .all(database)
        .await
        .expect("assignments");
    let department_of = |assignment_id: &str| {
        let row = assignment_rows
            .iter()
            .find(|row| row.assignment_id == assignment_id)
            .expect("a clock's assignment");
        (row.case_id.clone(), row.department_code.clone())
    };
    let mut assignments: Vec<_> = assignment_rows
        .iter()
        .map(|row| {
            (
                row.case_id.clone(),
                row.department_code.clone(),
                row.status.clone(),
                row.version,
                [
                    row.whistled_at_ms,
                    row.acknowledge_by_ms,
                    row.on_site_by_ms,
                    row.resolve_by_ms,
                ],
                row.overdue,
            )
        })
        .collect();
    assignments.sort();
    let mut clocks: Vec<_> = storage::clock::Entity::find()
        .all(database)
        .await
        .expect("clocks")
        .into_iter()
        .map(|row| {
            let (case_id, department) = department_of(&row.assignment_id);
            assert_eq!(
                (&case_id, &department),
                (&row.case_id, &row.department_code)
            );
            (case_id, department, row.clock, row.step, row.due_at_ms)
        })
        .collect();
    clocks.sort();
    let mut timeline: Vec<_> = storage::timeline::Entity::find()
        .order_by_asc(storage::timeline::Column::Id)
        .all(database)
        .await
        .expect("timeline")
        .into_iter()
        .map(|row| (row.case_id, row.at_ms, row.kind, row.actor, row.detail))
        .collect();
    // cases opened together are written together: the order that counts is each case's own
    timeline.sort_by(|left, right| left.0.cmp(&right.0));
    let mut events: Vec<(String, String)> = outbox::entity::Entity::find()
        .order_by_asc(outbox::entity::Column::Id)
        .all(database)
        .await
        .expect("outbox")
        .into_iter()
        .map(|row| {
            let event = envelope::decode(&row.payload).expect("event");
            (event.case_id, row.subject)
        })
        .collect();
    events.sort_by(|left, right| left.0.cmp(&right.0));
    let mut pending: Vec<_> = storage::pending::Entity::find()
        .all(database)
        .await
        .expect("pending")
        .into_iter()
        .map(|row| (row.case_id, row.event_id))
        .collect();
    pending.sort();
    Stored {
        cases,
        assignments,
        clocks,
        timeline,
        events,
        pending,
    }
}

async fn same_rows_one_by_one_and_in_batches(url_of: impl AsyncFn(&str) -> String) {
    let events = script();
    let reference = common::routed_database(url_of("one-by-one").await, 2).await;
    apply_one_by_one(&reference, &events).await;
    let expected = stored(&reference).await;
    // what the script must reach, or the comparison proves little
    assert_eq!(expected.cases.len(), 9, "{:?}", expected.cases);
    assert!(expected.cases.iter().any(|case| case.recurrent));
    assert!(
        expected.assignments.len() >= 10,
        "{:?}",
        expected.assignments
    );
    assert_eq!(expected.pending.len(), 1, "the news about case-99 waits");
    for kind in ["case.recurrent", "case.evidence_attached", "case.merged"] {
        assert!(
            expected.timeline.iter().any(|entry| entry.2 == kind),
            "{kind} is on the timeline"
        );
    }
    for size in [3, 5, 8, 32] {
        let database = common::routed_database(url_of(&format!("batches-{size}")).await, 2).await;
        apply_in_batches(&database, &events, size).await;
        let got = stored(&database).await;
        assert_eq!(got.cases, expected.cases, "cases, batches of {size}");
        assert_eq!(got.assignments, expected.assignments, "batches of {size}");
        assert_eq!(got.clocks, expected.clocks, "clocks, batches of {size}");
        assert_eq!(
            got.timeline, expected.timeline,
            "timeline, batches of {size}"
        );
        assert_eq!(got.events, expected.events, "events, batches of {size}");
        assert_eq!(got.pending, expected.pending, "pending, batches of {size}");
        let _ = database.close().await;
    }
}

#[tokio::test]
async fn sqlite_opens_reported_cases_together_as_one_by_one() {
    let dir = tempfile::tempdir().expect("folder");
    let root = dir.path().to_path_buf();
    same_rows_one_by_one_and_in_batches(async |name: &str| {
        format!("sqlite://{}", root.join(format!("{name}.sqlite")).display())
    })
    .await;
}

#[tokio::test]
async fn postgres_opens_reported_cases_together_as_one_by_one() {
    let databases = std::sync::Mutex::new(Vec::new());
    same_rows_one_by_one_and_in_batches(async |_: &str| {
        let postgres = TestPostgres::create().await;
        let url = postgres.url.clone();
        databases.lock().expect("databases").push(postgres);
        url
    })
    .await;
    let databases = std::mem::take(&mut *databases.lock().expect("databases"));
    for postgres in databases {
        postgres.drop_database().await;
    }
}

/// Two dispatch replicas: one opens a case in its batch while the other, in its own batch, gets
/// news about it, finds no case (not committed yet) and keeps the news pending. Neither sees the
/// other; the sweep (`apply_stranded_news`, run by the scanner) applies the news, once.
async fn news_stranded_between_replicas_is_applied(database: &DatabaseConnection, race: bool) {
    let subject = "case.v1.test";
    let replica = || {
        ReportedCases::new(
            Arc::new(ManualClock::new(now())),
            Arc::new(CalendarTime),
            OutboxSignal::default(),
        )
    };
    let (first, second) = (replica(), replica());
    let opened = reported("r1", "case-raced", "E-01-03");
    let news = recurrent("r2", "case-raced");
    let never = recurrent("r3", "case-never-reported");
    let opening = database.begin().await.expect("transaction");
    first
        .before_batch(
            &opening,
            &[BatchEvent {
                subject,
                event: &opened,
            }],
        )
        .await
        .expect("batch read");
    first
        .handle(&opening, subject, &opened)
        .await
        .expect("opened in memory");
    let mut opening = Some(opening);
    if !race && let Some(opening) = opening.take() {
        // SQLite has one writer: the other replica's batch cannot run meanwhile
        first.before_commit(&opening).await.expect("saved");
        opening.commit().await.expect("commit");
    }
    for event in [&news, &never] {
        let transaction = database.begin().await.expect("transaction");
        second
            .before_batch(&transaction, &[BatchEvent { subject, event }])
            .await
            .expect("batch read");
        if race {
            second
                .handle(&transaction, subject, event)
                .await
                .expect("kept pending");
        } else {
            // what the racing replica wrote: the news kept pending though the case is open
            storage::pending::Entity::insert(storage::pending::ActiveModel {
                event_id: sea_orm::Set(event.event_id.clone()),
                case_id: sea_orm::Set(event.case_id.clone()),
                event: sea_orm::Set(prost::Message::encode_to_vec(event)),
                received_at_ms: sea_orm::Set(0),
            })
            .exec(&transaction)
            .await
            .expect("pending");
        }
        second.before_commit(&transaction).await.expect("saved");
        transaction.commit().await.expect("commit");
    }
    if let Some(opening) = opening.take() {
        first.before_commit(&opening).await.expect("saved");
        opening.commit().await.expect("commit");
    }
    let pending_of = |stored: &Stored| -> Vec<String> {
        stored
            .pending
            .iter()
            .map(|(case_id, _)| case_id.clone())
            .collect()
    };
    let before = stored(database).await;
    assert_eq!(
        pending_of(&before),
        ["case-never-reported", "case-raced"],
        "the news about the case being opened was kept pending"
    );
    assert!(!before.cases[0].recurrent);

    let swept = whistle_dispatch::service::apply_stranded_news(database, now(), &CalendarTime, 100)
        .await
        .expect("sweep");
    assert_eq!(swept, (1, vec!["E-01-03".to_string()]));
    let after = stored(database).await;
    assert!(after.cases[0].recurrent, "the news applied");
    assert_eq!(pending_of(&after), ["case-never-reported"]);
    assert!(
        after
            .timeline
            .iter()
            .any(|entry| entry.0 == "case-raced" && entry.2 == "case.recurrent")
    );
    // once: a second sweep finds nothing
    let again = whistle_dispatch::service::apply_stranded_news(database, now(), &CalendarTime, 100)
        .await
        .expect("sweep");
    assert_eq!(again, (0, vec![]));
    assert_eq!(stored(database).await, after);
}

#[tokio::test]
async fn sqlite_news_kept_pending_for_an_open_case_is_swept() {
    let dir = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", dir.path().join("swept.sqlite").display());
    let database = common::routed_database(url, 1).await;
    news_stranded_between_replicas_is_applied(&database, false).await;
}

#[tokio::test]
async fn postgres_news_raced_by_two_replicas_is_swept() {
    let postgres = TestPostgres::create().await;
    let database = common::routed_database(postgres.url.clone(), 4).await;
    news_stranded_between_replicas_is_applied(&database, true).await;
    let _ = database.close().await;
    postgres.drop_database().await;
}

/// A reported case whose events cannot be published (a region code that is no NATS subject token)
/// is refused alone when handled, as one by one; the rest of its batch is saved. Saved with the
/// batch, it would fail every event of the batch at each redelivery.
#[tokio::test]
async fn a_case_that_cannot_be_published_is_refused_alone_in_its_batch() {
    let dir = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", dir.path().join("refused.sqlite").display());
    let database = common::routed_database(url, 1).await;
    let handler = ReportedCases::new(
        Arc::new(ManualClock::new(now())),
        Arc::new(CalendarTime),
        OutboxSignal::default(),
    );
    let subject = "case.v1.test";
    let mut bad = reported("b2", "case-bad", "E-01-03");
    if let Some(region) = bad.region.as_mut() {
        region.district_code = "{20303".into();
    }
    let batch = [
        reported("b1", "case-good-1", "E-01-03"),
        bad,
        reported("b3", "case-good-2", "E-01-03"),
    ];
    let transaction = database.begin().await.expect("transaction");
    let batch_events: Vec<BatchEvent<'_>> = batch
        .iter()
        .map(|event| BatchEvent { subject, event })
        .collect();
    handler
        .before_batch(&transaction, &batch_events)
        .await
        .expect("batch read");
    let mut outcomes = Vec::new();
    for event in &batch {
        outcomes.push(match handler.handle(&transaction, subject, event).await {
            Ok(()) => true,
            Err(HandleError::Rejected(_)) => false,
            Err(error) => panic!("{error}"),
        });
    }
    assert_eq!(outcomes, [true, false, true]);
    handler
        .before_commit(&transaction)
        .await
        .expect("the rest of the batch is saved");
    transaction.commit().await.expect("commit");
    let cases: Vec<String> = stored(&database)
        .await
        .cases
        .into_iter()
        .map(|case| case.case_id)
        .collect();
    assert_eq!(cases, ["case-good-1", "case-good-2"]);
}
