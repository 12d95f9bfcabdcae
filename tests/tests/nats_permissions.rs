//! NATS accounts and event provenance against a real nats-server running the configuration
//! generated from the demo registry (the users `whistle up` and `whistle nats-config` write):
//! nobody gets in anonymously, a department cannot subscribe to another department's whistles nor
//! create a consumer on them, a department cannot publish (forge) an event, and an event published
//! with a service's own credentials but of a kind that service does not publish reaches the
//! department-gateway's consumer, which records it as rejected and does not apply it.

use async_nats::jetstream::{self, consumer::pull};
use sea_orm::{ConnectionTrait, Statement};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use whistle_e2e::{Platform, Storage, wait_serving};
use whistle_platform::SystemClock;
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::local_nats::LocalNatsServer;
use whistle_platform::nats_accounts::Registry;
use whistle_platform::testing::{demo_region, publish_like_relay};
use whistle_proto::events::{CaseEscalated, WhistleIssued};
use whistle_proto::types::Assignment;

fn whistle_to(department: &str) -> Event {
    envelope::new_event(
        &SystemClock,
        "whistle-dispatch",
        "case-permissions",
        2,
        Some(demo_region()),
        Payload::WhistleIssued(WhistleIssued {
            assignment: Some(Assignment {
                assignment_id: format!("a-{department}"),
                case_id: "case-permissions".into(),
                department_code: department.into(),
                version: 1,
                ..Default::default()
            }),
            category_code: "E-01-03".into(),
            ..Default::default()
        }),
    )
}

fn escalation(source: &str) -> Event {
    envelope::new_event(
        &SystemClock,
        source,
        &format!("case-{}", uuid::Uuid::now_v7()),
        3,
        Some(demo_region()),
        Payload::CaseEscalated(CaseEscalated {
            assignment_id: "a-escalated".into(),
            department_code: "zw-sanitation".into(),
            supervisor_code: "zw-supervision".into(),
            ..Default::default()
        }),
    )
}

/// A client logged in as `user`, with the server's error reports (permission violations) sent to
/// the returned channel.
async fn login(
    nats: &LocalNatsServer,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let seed = std::fs::read_to_string(nats.seed_file(user).expect("server with users"))
        .expect("seed file");
    let (errors, reports) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        // a reader's replies arrive on its own inbox prefix, the only one it may subscribe to
        .custom_inbox_prefix(format!("_INBOX.{user}"))
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = errors.send(error.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|error| panic!("{user} logs in: {error}"));
    (client, reports)
}

/// The next server error naming `needle`, within 10 s.
async fn expect_violation(reports: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = tokio::time::timeout_at(deadline, reports.recv())
            .await
            .unwrap_or_else(|_| panic!("no permissions violation naming {needle} within 10 s"))
            .expect("client alive");
        if report.to_lowercase().contains("permissions violation") && report.contains(needle) {
            return report;
        }
    }
}

async fn messages_in(jetstream: &jetstream::Context, stream: &str) -> u64 {
    jetstream
        .get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}

/// How many inbox rows the gateway has for `event_id`, now.
async fn inbox_row_count(db: &sea_orm::DatabaseConnection, event_id: &str) -> i64 {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT COUNT(*) AS n FROM whistle_inbox WHERE event_id = '{event_id}'"),
    ))
    .await
    .expect("count")
    .expect("a row")
    .try_get::<i64>("", "n")
    .expect("n")
}

/// The inbox outcome the gateway recorded for `event_id`, waiting up to 30 s for one.
async fn inbox_outcome(db: &sea_orm::DatabaseConnection, event_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT outcome FROM whistle_inbox WHERE event_id = '{event_id}'"),
            ))
            .await
            .ok()
            .flatten();
        if let Some(row) = row {
            return row.try_get::<String>("", "outcome").expect("outcome");
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not record {event_id} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_held_to_their_subjects_and_kinds() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    // the harness's server is open; this test runs the generated users instead
    let registry = Registry::from_catalogue_json(
        &std::fs::read_to_string(whistle_e2e::demo_catalogue()).expect("catalogue"),
    )
    .expect("registry");
    platform.nats = LocalNatsServer::start_with_accounts(
        &platform.dir.path().join("nats-with-users"),
        &registry,
    )
    .expect("nats-server with users");
    let nats = &platform.nats;

    // no anonymous access
    let anonymous = async_nats::ConnectOptions::new()
        .connect(nats.url())
        .await
        .expect_err("anonymous login");
    assert!(
        matches!(
            anonymous.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation
        ),
        "{anonymous}"
    );

    // the gateway logs in with its own seed and creates the streams and its consumers
    let url = nats.url();
    let gateway_seed = nats.seed_file("department-gateway").expect("seed");
    platform
        .gateway
        .set_env("WHISTLE_DEPARTMENT_GATEWAY__NATS__URL", url.clone());
    platform.gateway.set_env(
        "WHISTLE_DEPARTMENT_GATEWAY__NATS__NKEY_SEED_FILE",
        gateway_seed.display().to_string(),
    );
    platform.gateway.start();
    wait_serving(&platform.gateway).await;
    let nats = &platform.nats;

    let (admin, _) = login(nats, "whistle-admin").await;
    let admin_js = jetstream::new(admin);
    let (dispatch, _) = login(nats, "dispatch").await;
    let dispatch_js = jetstream::new(dispatch);

    // a department reads its own whistles live ...
    let (sanitation, mut sanitation_errors) = login(nats, "zw-sanitation").await;
    let mut own = sanitation
        .subscribe("whistle.v1.*.*.*.zw-sanitation.>")
        .await
        .expect("subscribe own");
    sanitation.flush().await.expect("flush");
    let mine = whistle_to("zw-sanitation");
    publish_like_relay(&dispatch_js, &mine, &mine.event_id).await;
    let received =
        tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut own))
            .await
            .expect("own whistle within 10 s")
            .expect("message");
    assert!(received.subject.as_str().ends_with(".zw-sanitation.issued"));

    // ... but not another department's: the server refuses the subscription
    let _theirs = sanitation
        .subscribe("whistle.v1.*.*.*.zw-enforcement.>")
        .await
        .expect("subscribe call");
    sanitation.flush().await.expect("flush");
    let report = expect_violation(&mut sanitation_errors, "zw-enforcement").await;
    assert!(report.contains("ubscription"), "{report}");

    // its durable consumer may filter its own whistles, never another department's
    let sanitation_js = jetstream::new(sanitation.clone());
    sanitation_js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("zw-sanitation".into()),
                filter_subject: "whistle.v1.*.*.*.zw-sanitation.>".into(),
                ..Default::default()
            },
            whistle_platform::nats::WHISTLES_STREAM,
        )
        .await
        .expect("own consumer");
    let stolen = sanitation_js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("zw-sanitation".into()),
                filter_subject: "whistle.v1.*.*.*.zw-enforcement.>".into(),
                ..Default::default()
            },
            whistle_platform::nats::WHISTLES_STREAM,
        )
        .await;
    assert!(
        stolen.is_err(),
        "a consumer on another department's whistles"
    );

    // a department cannot forge an event: the server refuses the publish, the stream is unchanged
    let before = messages_in(&admin_js, whistle_platform::nats::WHISTLES_STREAM).await;
    let forged = whistle_to("zw-sanitation");
    let outbox = envelope::to_outbox(&forged).expect("envelope");
    sanitation
        .publish(outbox.subject.clone(), outbox.payload.clone().into())
        .await
        .expect("publish call");
    sanitation.flush().await.expect("flush");
    let report = expect_violation(&mut sanitation_errors, &outbox.subject).await;
    assert!(report.contains("ublish"), "{report}");
    assert_eq!(
        messages_in(&admin_js, whistle_platform::nats::WHISTLES_STREAM).await,
        before
    );

    // intake may publish case.*.reported; an escalation (dispatch's kind) smuggled onto that
    // subject with intake's credentials is never applied by the gateway: on NATS 2.9 its cases
    // consumer is given it and refuses it; from 2.10 that consumer is given escalations on their
    // own subject only (docs/design-notes.md, "A consumer is given what it applies"), so it never
    // sees it
    let (intake, _) = login(nats, "intake").await;
    let narrowed = whistle_platform::inbox::takes_several_filters(&intake.server_info().version);
    let intake_js = jetstream::new(intake);
    let smuggled = escalation("whistle-intake");
    let smuggled_outbox = envelope::to_outbox(&smuggled).expect("envelope");
    let reported_subject = smuggled_outbox.subject.replace(".escalated", ".reported");
    intake_js
        .publish_with_headers(
            reported_subject,
            whistle_platform::outbox::headers_for(&smuggled.event_id, &smuggled_outbox.headers),
            smuggled_outbox.payload.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("intake may publish on case.*.reported");
    // the same escalation from dispatch, the service that publishes escalations, is applied
    let genuine = escalation("whistle-dispatch");
    publish_like_relay(&dispatch_js, &genuine, &genuine.event_id).await;

    let db = sea_orm::Database::connect(platform.gateway.database_url())
        .await
        .expect("gateway database");
    if narrowed {
        // the genuine one came later in the stream: once it is applied, the smuggled one would
        // have been recorded before it, had it been delivered
        assert_eq!(inbox_outcome(&db, &genuine.event_id).await, "applied");
        assert_eq!(
            inbox_row_count(&db, &smuggled.event_id).await,
            0,
            "the smuggled escalation reached the gateway's cases consumer"
        );
    } else {
        let outcome = inbox_outcome(&db, &smuggled.event_id).await;
        assert!(
            outcome.starts_with("rejected: source"),
            "smuggled escalation: {outcome}"
        );
        assert_eq!(inbox_outcome(&db, &genuine.event_id).await, "applied");
        let log = platform.gateway.log_text();
        assert!(
            log.contains("event refused: not from the service that publishes its kind"),
            "{}",
            platform.gateway.log_tail()
        );
    }
    let gateway_errors = platform.gateway.log_text();
    assert!(
        !gateway_errors.contains("Permissions Violation"),
        "the gateway met a permission it lacks: {}",
        platform.gateway.log_tail()
    );
    platform.shutdown().await;
}

/// `nkey: "U…"` replaced, so files generated with other seeds compare equal.
fn without_keys(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.find("nkey: \"") {
            Some(at) => format!("{}nkey: <key>{}", &line[..at], &line[at + 63..]),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// deploy/nats/whistle-accounts.conf is what `whistle nats-config` makes of the Kubernetes
/// catalogue (apart from the example keys), and nats-server accepts it.
#[test]
fn the_checked_in_account_is_generated_from_the_registry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let registry = Registry::from_catalogue_json(
        &std::fs::read_to_string(root.join("deploy/k8s/base/catalogue.json")).expect("catalogue"),
    )
    .expect("registry");
    let users = whistle_platform::nats_accounts::users(&registry).expect("users");
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        whistle_platform::nats_accounts::generate(&users, &dir.path().join("seeds"), "", true)
            .expect("generate");
    let checked_in =
        std::fs::read_to_string(root.join("deploy/nats/whistle-accounts.conf")).expect("file");
    assert_eq!(
        without_keys(&checked_in).trim(),
        without_keys(&generated).trim(),
        "regenerate deploy/nats/whistle-accounts.conf with `whistle nats-config`"
    );
    // the production file needs nats-server 2.10 (CI checks it); the account alone is checked
    // here with whatever server the machine has
    std::fs::write(dir.path().join("whistle-accounts.conf"), &checked_in).expect("write");
    std::fs::write(
        dir.path().join("server.conf"),
        "accounts {\n  include \"whistle-accounts.conf\"\n}\n",
    )
    .expect("write");
    let output = std::process::Command::new(LocalNatsServer::find_binary().expect("nats-server"))
        .arg("-t")
        .arg("-c")
        .arg(dir.path().join("server.conf"))
        .output()
        .expect("nats-server -t");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
