//! `whistle bench --preload`'s loader: finished cases stored through each service's own storage
//! layer before the services start. Each service's preload leaves its rows (counted per service),
//! no unsent outbox row and no deadline clock; the four real service binaries then start on those
//! databases with a fresh NATS server and publish nothing about the preloaded cases (the cases and
//! whistles streams stay empty), and evaluation's scorecard counts them. On SQLite, and (a separate
//! test) on PostgreSQL at 127.0.0.1:5432.

use async_nats::jetstream;
use sea_orm::EntityTrait;
use std::collections::BTreeMap;
use std::time::Duration;
use whistle_e2e::{Platform, Storage, postgres_admin_url};
use whistle_platform::config::DatabaseConfig;
use whistle_proto::evaluation::GetScorecardRequest;
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;

const CASES: usize = 500;

async fn connect(url: &str) -> sea_orm::DatabaseConnection {
    whistle_platform::db::connect(&DatabaseConfig {
        acquire_timeout_ms: 30_000,
        read_connections: 1,
        ..DatabaseConfig::at(url, 2)
    })
    .await
    .expect("connect")
}

async fn counts(platform: &Platform) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    let db = connect(&platform.intake.database_url()).await;
    counts.insert(
        "intake".to_string(),
        whistle_intake::preload::row_counts(&db)
            .await
            .expect("rows"),
    );
    db.close().await.expect("close");
    let db = connect(&platform.dispatch.database_url()).await;
    counts.insert(
        "dispatch".to_string(),
        whistle_dispatch::preload::row_counts(&db)
            .await
            .expect("rows"),
    );
    db.close().await.expect("close");
    let db = connect(&platform.gateway.database_url()).await;
    counts.insert(
        "department-gateway".to_string(),
        whistle_department_gateway::preload::row_counts(&db)
            .await
            .expect("rows"),
    );
    db.close().await.expect("close");
    let db = connect(&platform.evaluation.database_url()).await;
    counts.insert(
        "evaluation".to_string(),
        whistle_evaluation::preload::row_counts(&db)
            .await
            .expect("rows"),
    );
    db.close().await.expect("close");
    counts
}

async fn preload_then_start(storage: Storage) {
    let mut platform = Platform::prepare(storage).await;
    let urls: BTreeMap<&str, String> = [
        ("intake", platform.intake.database_url()),
        ("dispatch", platform.dispatch.database_url()),
        ("department-gateway", platform.gateway.database_url()),
        ("evaluation", platform.evaluation.database_url()),
    ]
    .into_iter()
    .collect();
    let loaded = whistle::bench::preload::run(&urls, &whistle_e2e::demo_catalogue(), CASES)
        .await
        .expect("preload");
    assert_eq!(loaded.cases, CASES);
    assert!(loaded.seconds > 0.0);

    // each service's rows are there, nothing waits in an outbox, no clock runs
    let before = counts(&platform).await;
    assert_eq!(before, loaded.rows, "what the loader reported");
    let intake = &before["intake"];
    assert_eq!(intake["intake_reports"], CASES as u64, "{before:#?}");
    assert_eq!(intake["intake_cases_closed"], CASES as u64, "{before:#?}");
    assert_eq!(intake["whistle_outbox_unsent"], 0, "{before:#?}");
    assert!(intake["whistle_inbox"] > CASES as u64, "{before:#?}");
    let dispatch = &before["dispatch"];
    assert_eq!(dispatch["dispatch_cases"], CASES as u64, "{before:#?}");
    assert_eq!(
        dispatch["dispatch_cases_closed"], CASES as u64,
        "{before:#?}"
    );
    let assignments = dispatch["dispatch_assignments"];
    assert!(assignments >= CASES as u64, "{before:#?}");
    assert_eq!(dispatch["dispatch_clocks"], 0, "{before:#?}");
    assert_eq!(dispatch["whistle_outbox_unsent"], 0, "{before:#?}");
    assert!(
        dispatch["dispatch_department_actions"] >= 2 * assignments,
        "{before:#?}"
    );
    let gateway = &before["department-gateway"];
    assert_eq!(gateway["gateway_assignments"], assignments, "{before:#?}");
    // at least whistled, acknowledged and resolved: three notices an assignment
    assert!(gateway["gateway_notices"] >= 3 * assignments, "{before:#?}");
    assert_eq!(gateway["whistle_outbox"], 0, "{before:#?}");
    let evaluation = &before["evaluation"];
    assert_eq!(evaluation["evaluation_cases"], CASES as u64, "{before:#?}");
    assert_eq!(
        evaluation["evaluation_assignments"], assignments,
        "{before:#?}"
    );
    assert_eq!(evaluation["whistle_outbox"], 0, "{before:#?}");
    assert!(
        loaded.after_sequence.values().sum::<u64>() == gateway["gateway_notices"],
        "every department's last sequence: {:?}",
        loaded.after_sequence
    );

    // the services start on the preloaded databases: nothing is published or applied again
    platform.start_all().await;
    let client = async_nats::connect(platform.nats.url())
        .await
        .expect("nats");
    let stream = jetstream::new(client);
    // the relays poll every 200 ms here; give them many rounds
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in [
        whistle_platform::nats::CASES_STREAM,
        whistle_platform::nats::WHISTLES_STREAM,
    ] {
        let messages = stream
            .get_stream(name)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        assert_eq!(
            messages, 0,
            "{name} got {messages} messages after a preload"
        );
    }
    let after = counts(&platform).await;
    for (service, rows) in &after {
        // evaluation closes the last month ended at start (its automatic close, preload or not):
        // its own event, checked below
        if service == "evaluation" {
            continue;
        }
        for (table, count) in rows {
            if table == "whistle_inbox" || table.starts_with("whistle_outbox") {
                assert_eq!(
                    count, &before[service][table],
                    "{service} {table} changed on start: {after:#?}"
                );
            }
        }
    }

    let db = connect(&platform.evaluation.database_url()).await;
    let published = whistle_platform::outbox::entity::Entity::find()
        .all(&db)
        .await
        .expect("outbox");
    db.close().await.expect("close");
    for row in published {
        let event = whistle_platform::envelope::decode(&row.payload).expect("event");
        assert!(
            row.subject.starts_with("evaluation.") && !event.case_id.starts_with("preload-"),
            "evaluation published {} about {:?} at start",
            row.subject,
            event.case_id
        );
    }

    // the scorecard counts them: the lead of the garbage routes verified some in their period
    let period = (chrono::Utc::now() - chrono::Duration::hours(24 - 8))
        .format("%Y-%m")
        .to_string();
    let mut evaluation = EvaluationServiceClient::new(platform.channel(&platform.evaluation));
    let card = evaluation
        .get_scorecard(GetScorecardRequest {
            department_code: "zw-sanitation".into(),
            period,
            ..Default::default()
        })
        .await
        .expect("scorecard")
        .into_inner();
    let verified = card.counts.map(|counts| counts.verified).unwrap_or(0);
    assert!(verified > 0, "no preloaded case on the scorecard: {card:?}");
    platform.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_cases_are_stored_by_every_service_and_nothing_is_published_at_start() {
    preload_then_start(Storage::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_cases_on_postgresql() {
    preload_then_start(Storage::Postgres {
        admin_url: postgres_admin_url(),
    })
    .await;
}
