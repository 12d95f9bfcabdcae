//! The notice recorder writes a batch's rows just before the commit: the notices numbered from the
//! counters taken at the start of the batch, the counters written back, and one row per assignment
//! (its newest version) even when the batch carries several versions of it, in any order. On a
//! SQLite file and on PostgreSQL (which refuses to update one row twice in a statement).

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use whistle_department_gateway::notices::{self, NoticeRecorder, NoticeSignal};
use whistle_department_gateway::preload;
use whistle_department_gateway::storage::{self, Migrator, TraceCache, assignment, notice};
use whistle_platform::SystemClock;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::testing::{TestPostgres, demo_region};
use whistle_proto::events::{AssignmentAcknowledged, AssignmentResolved, WhistleIssued};
use whistle_proto::types::{Assignment, AssignmentRole, AssignmentStatus};

fn assignment_at(
    id: &str,
    department_code: &str,
    status: AssignmentStatus,
    version: u64,
) -> Assignment {
    Assignment {
        assignment_id: id.into(),
        case_id: format!("case-{id}"),
        department_code: department_code.into(),
        role: AssignmentRole::Lead as i32,
        status: status as i32,
        version,
        ..Default::default()
    }
}

/// The event that brings `assignment` to its version (the case's version is one more).
fn event(assignment: Assignment, padding: usize) -> (String, Event) {
    let case_version = assignment.version + 1;
    let case_id = assignment.case_id.clone();
    let payload = match AssignmentStatus::try_from(assignment.status) {
        Ok(AssignmentStatus::Acknowledged) => {
            Payload::AssignmentAcknowledged(AssignmentAcknowledged {
                assignment: Some(assignment),
                within_limit: true,
            })
        }
        Ok(AssignmentStatus::Resolved) => Payload::AssignmentResolved(AssignmentResolved {
            assignment: Some(assignment),
            within_limit: true,
        }),
        _ => Payload::WhistleIssued(WhistleIssued {
            assignment: Some(assignment),
            description: "满".repeat(padding),
            ..Default::default()
        }),
    };
    let event = envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        &case_id,
        case_version,
        Some(demo_region()),
        payload,
    );
    let subject = envelope::subject(&event).expect("subject");
    (subject, event)
}

async fn notices_of(db: &DatabaseConnection, department_code: &str) -> Vec<(i64, String)> {
    notice::Entity::find()
        .filter(notice::Column::DepartmentCode.eq(department_code))
        .order_by_asc(notice::Column::Sequence)
        .all(db)
        .await
        .expect("notices")
        .into_iter()
        .map(|notice| (notice.sequence, notice.event_id))
        .collect()
}

async fn version_of(db: &DatabaseConnection, assignment_id: &str) -> i64 {
    assignment::Entity::find_by_id(assignment_id)
        .one(db)
        .await
        .expect("assignment")
        .expect("stored")
        .version
}

/// `padding`: characters of description per whistle, so a batch's rows outgrow what the recorder
/// holds before writing them (three bytes each).
async fn batches_number_notices_and_keep_the_newest_assignment(url: &str, padding: usize) {
    let db = db::connect(&DatabaseConfig::at(url, 2))
        .await
        .expect("connect");
    db::migrate::<Migrator>(&db).await.expect("migrate");
    let sanitation = "zw-sanitation";
    let housing = "zw-housing";
    let at = |id: &str, department_code: &str, status, version| {
        event(assignment_at(id, department_code, status, version), padding)
    };
    let first = vec![
        at("a1", sanitation, AssignmentStatus::Whistled, 1),
        at("a1", sanitation, AssignmentStatus::Acknowledged, 2),
        // a stale copy after the newer version, in the same batch
        at("a1", sanitation, AssignmentStatus::Whistled, 1),
        at("a2", sanitation, AssignmentStatus::Whistled, 1),
        at("a3", housing, AssignmentStatus::Whistled, 1),
    ];
    preload::apply(&db, &first, 0).await.expect("first batch");
    assert_eq!(
        version_of(&db, "a1").await,
        2,
        "the stale copy after version 2 in the same batch does not win"
    );
    let second = vec![
        at("a1", sanitation, AssignmentStatus::Resolved, 3),
        at("a4", sanitation, AssignmentStatus::Whistled, 1),
    ];
    preload::apply(&db, &second, 0).await.expect("second batch");
    // a batch that carries only an older version changes nothing but adds its notice
    let stale = vec![at("a1", sanitation, AssignmentStatus::Acknowledged, 2)];
    preload::apply(&db, &stale, 0).await.expect("stale batch");

    let expected: Vec<(i64, String)> = first
        .iter()
        .filter(|(_, event)| event.case_id != "case-a3")
        .chain(second.iter())
        .chain(stale.iter())
        .zip(1..)
        .map(|((_, event), sequence)| (sequence, event.event_id.clone()))
        .collect();
    assert_eq!(
        notices_of(&db, sanitation).await,
        expected,
        "gap-free, in event order"
    );
    assert_eq!(
        notices_of(&db, housing).await,
        vec![(1, first[4].1.event_id.clone())]
    );
    let counters: std::collections::BTreeMap<String, i64> = storage::notice_counters(&db)
        .await
        .expect("counters")
        .into_iter()
        .collect();
    assert_eq!(counters.get(sanitation), Some(&7));
    assert_eq!(counters.get(housing), Some(&1));
    assert_eq!(version_of(&db, "a1").await, 3, "the newest version is kept");
    assert_eq!(version_of(&db, "a2").await, 1);
    assert_eq!(version_of(&db, "a4").await, 1);
    db.close().await.expect("close");
}

/// The gateway's database on a SQLite file in `dir`.
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("gateway.sqlite").display()
    )
}

/// Descriptions per whistle: none, and 40,000 characters (120,000 bytes), which makes the four
/// whistles of the first batch outgrow what the recorder holds, so it writes in the middle of it.
const PADDINGS: [usize; 2] = [0, 40_000];

#[tokio::test]
async fn batches_on_sqlite() {
    for padding in PADDINGS {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = sqlite_url(&dir);
        batches_number_notices_and_keep_the_newest_assignment(&url, padding).await;
    }
}

#[tokio::test]
async fn batches_on_postgresql() {
    for padding in PADDINGS {
        let database = TestPostgres::create().await;
        batches_number_notices_and_keep_the_newest_assignment(&database.url, padding).await;
        database.drop_database().await;
    }
}

/// A notice recorder on a migrated SQLite file (the folder goes with the first value).
async fn recorder_on_sqlite() -> (
    tempfile::TempDir,
    DatabaseConnection,
    NoticeSignal,
    NoticeRecorder,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db::connect(&DatabaseConfig::at(sqlite_url(&dir), 1))
        .await
        .expect("connect");
    db::migrate::<Migrator>(&db).await.expect("migrate");
    let signal = NoticeSignal::default();
    let recorder = NoticeRecorder::new(
        std::sync::Arc::new(SystemClock),
        signal.clone(),
        TraceCache::default(),
    );
    (dir, db, signal, recorder)
}

/// The whistle consumer's inbox for `whistle.v1.*` subjects, as `apply_history` asks.
fn consumer_of(subject: &str) -> Option<String> {
    subject
        .starts_with("whistle.v1.")
        .then(|| notices::CONSUMER.to_string())
}

/// A whistle of assignment `id` to `department_code`.
fn at(id: &str, department_code: &str) -> (String, Event) {
    event(
        assignment_at(id, department_code, AssignmentStatus::Whistled, 1),
        0,
    )
}

/// A committed batch tells the subscriptions the sequences it numbered, with no query (nothing
/// follows the counters here); a batch that fails and rolls back tells them nothing.
#[tokio::test]
async fn a_committed_batch_raises_what_subscriptions_wait_on() {
    let (_dir, db, signal, recorder) = recorder_on_sqlite().await;
    let waiting = signal.subscribe();
    let batch = vec![
        at("a1", "zw-sanitation"),
        at("a2", "zw-sanitation"),
        at("a3", "zw-housing"),
    ];
    whistle_platform::inbox::apply_history(&db, &recorder, consumer_of, &batch, 0)
        .await
        .expect("batch");
    let expected = std::collections::HashMap::from([
        ("zw-sanitation".to_string(), 2),
        ("zw-housing".to_string(), 1),
    ]);
    assert_eq!(*waiting.borrow(), expected);

    // an assignment without an id is refused: the batch rolls back, its numbers are not told
    let failing = vec![at("a4", "zw-sanitation"), at("", "zw-sanitation")];
    assert!(
        whistle_platform::inbox::apply_history(&db, &recorder, consumer_of, &failing, 0)
            .await
            .is_err()
    );
    assert_eq!(
        *waiting.borrow(),
        expected,
        "nothing told of a rolled-back batch"
    );
    assert_eq!(
        storage::notice_counters(&db).await.expect("counters").len(),
        2
    );
    db.close().await.expect("close");
}

/// A committed batch keeps its notices to departments subscribed here in memory, as the database
/// has them, so a live subscription is handed them without a read; a department no one watches
/// here, a rolled-back batch and a dropped watch keep nothing.
#[tokio::test]
async fn committed_notices_of_watched_departments_are_kept_in_memory() {
    let (_dir, db, signal, recorder) = recorder_on_sqlite().await;
    let watch = signal.watch("zw-sanitation");
    let batch = vec![
        at("a1", "zw-sanitation"),
        at("a2", "zw-housing"),
        at("a3", "zw-sanitation"),
    ];
    whistle_platform::inbox::apply_history(&db, &recorder, consumer_of, &batch, 0)
        .await
        .expect("batch");

    let stored = storage::notices_after(&db, "zw-sanitation", 0, 10)
        .await
        .expect("stored");
    let without_id = |rows: Vec<notice::Model>| {
        rows.into_iter()
            .map(|row| notice::Model { id: 0, ..row })
            .collect::<Vec<_>>()
    };
    let kept = signal.recent_after("zw-sanitation", 0, 10);
    assert_eq!(kept.len(), 2);
    assert_eq!(without_id(kept), without_id(stored.clone()), "as stored");
    assert_eq!(
        without_id(signal.recent_after("zw-sanitation", 1, 10)),
        without_id(stored[1..].to_vec()),
        "from a later sequence"
    );
    assert!(signal.recent_after("zw-sanitation", 2, 10).is_empty());
    assert!(
        signal.recent_after("zw-housing", 0, 10).is_empty(),
        "no subscription here watches it"
    );

    // a rolled-back batch keeps nothing
    let failing = vec![at("a4", "zw-sanitation"), at("", "zw-sanitation")];
    assert!(
        whistle_platform::inbox::apply_history(&db, &recorder, consumer_of, &failing, 0)
            .await
            .is_err()
    );
    assert_eq!(signal.recent_after("zw-sanitation", 0, 10).len(), 2);

    // the last watch of a department dropped, its notices are forgotten
    drop(watch);
    assert!(signal.recent_after("zw-sanitation", 0, 10).is_empty());
    db.close().await.expect("close");
}
