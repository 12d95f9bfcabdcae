//! A configuration that cannot work stops the binary at once with exit code 64 and a message that
//! names the setting.

use std::process::Command;
use whistle_e2e::binary;

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    for (service, variable, value, named) in [
        (
            "intake",
            "WHISTLE_INTAKE__DATABASE__URL",
            "mysql://nope",
            "database.url",
        ),
        (
            "dispatch",
            "WHISTLE_DISPATCH__NATS__URL",
            "http://nats",
            "nats.url",
        ),
        (
            "department-gateway",
            "WHISTLE_DEPARTMENT_GATEWAY__DISPATCH__URL",
            "dispatch:50052",
            "dispatch.url",
        ),
        (
            "evaluation",
            "WHISTLE_EVALUATION__GRPC__LISTEN",
            "not-an-address",
            "listen",
        ),
        (
            "intake",
            "WHISTLE_INTAKE__OPEN311__ENABLED",
            "true",
            "open311.api_keys_file",
        ),
        (
            "dispatch",
            "WHISTLE_DISPATCH__AUTH__LEEWAY_SECS",
            "100000",
            "auth.leeway_secs",
        ),
        (
            "intake",
            "WHISTLE_INTAKE__MERGING__DISTANCE_METERS",
            "0",
            "merging.distance_meters",
        ),
    ] {
        let output = Command::new(binary(service))
            .env(
                format!(
                    "{}__ADMIN__LISTEN",
                    whistle_platform::config::env_prefix(service)
                ),
                "127.0.0.1:0",
            )
            .env(variable, value)
            .output()
            .expect("run");
        assert_eq!(
            output.status.code(),
            Some(64),
            "{service} with {variable}={value}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(named),
            "{service}: stderr does not name {named}: {stderr}"
        );
    }
    let output = Command::new(binary("intake"))
        .env("WHISTLE_INTAKE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__AUTH__ENABLED", "false")
        .arg("--config")
        .arg("/nonexistent/whistle.toml")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
}

/// A service, the environment that breaks it, and the setting its message must name.
type ConfigCase = (&'static str, Vec<(&'static str, String)>, &'static str);

/// Every kind of configuration that cannot work exits 64 naming the setting, before any migration
/// runs (the SQLite file is never created), including those only found against the NATS server.
#[test]
fn every_configuration_error_exits_64_before_migrating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = whistle_e2e::LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("busy port");
    let busy_port = busy.local_addr().expect("address").port();
    let malformed_catalogue = dir.path().join("catalogue.json");
    // each service reads its own part of the file: every part is malformed
    std::fs::write(
        &malformed_catalogue,
        r#"{"streets": [{"code": 1}], "routes": [{"route_id": 1}], "departments": [{"code": 1}]}"#,
    )
    .expect("write");
    let garbage_credentials = dir.path().join("credentials.json");
    std::fs::write(&garbage_credentials, "zw-sanitation=secret").expect("write");
    let catalogue = format!("{}", whistle_e2e::demo_catalogue().display());
    let cases: Vec<ConfigCase> = vec![
        (
            "intake",
            vec![("WHISTLE_INTAKE__TELEMETRY__LOG_FILTER", "info,[[".into())],
            "telemetry.log_filter",
        ),
        (
            "dispatch",
            vec![(
                "WHISTLE_DISPATCH__GRPC__LISTEN",
                format!("127.0.0.1:{busy_port}"),
            )],
            "grpc.listen",
        ),
        (
            "intake",
            vec![(
                "WHISTLE_INTAKE__CATALOGUE__FILE",
                malformed_catalogue.display().to_string(),
            )],
            "catalogue.file",
        ),
        (
            "dispatch",
            vec![(
                "WHISTLE_DISPATCH__CATALOGUE__FILE",
                malformed_catalogue.display().to_string(),
            )],
            "catalogue.file",
        ),
        (
            "evaluation",
            vec![(
                "WHISTLE_EVALUATION__CATALOGUE__FILE",
                malformed_catalogue.display().to_string(),
            )],
            "catalogue.file",
        ),
        (
            "department-gateway",
            vec![
                (
                    "WHISTLE_DEPARTMENT_GATEWAY__CATALOGUE__FILE",
                    catalogue.clone(),
                ),
                (
                    "WHISTLE_DEPARTMENT_GATEWAY__CATALOGUE__CREDENTIALS_FILE",
                    garbage_credentials.display().to_string(),
                ),
            ],
            "catalogue.credentials_file",
        ),
        (
            "evaluation",
            vec![(
                "WHISTLE_EVALUATION__DATABASE__URL",
                "sqlite:///proc/whistle/evaluation.sqlite".into(),
            )],
            "database.url",
        ),
        (
            "intake",
            vec![("WHISTLE_INTAKE__NATS__URL", "nats://".into())],
            "nats.url",
        ),
        (
            "dispatch",
            vec![("WHISTLE_DISPATCH__NATS__URL", "nats://:4222".into())],
            "nats.url",
        ),
        (
            "intake",
            vec![("WHISTLE_INTAKE__NATS__STREAM_REPLICAS", "3".into())],
            "nats.stream_replicas",
        ),
        (
            "intake",
            vec![("WHISTLE_INTAKE__LIMITS__MAX_EVENT_BYTES", "2000000".into())],
            "limits.max_event_bytes",
        ),
        (
            "department-gateway",
            vec![(
                "WHISTLE_DEPARTMENT_GATEWAY__GRPC__IDLE_TIMEOUT_SECS",
                "5".into(),
            )],
            "grpc.idle_timeout_secs",
        ),
    ];
    for (index, (service, variables, named)) in cases.into_iter().enumerate() {
        let database = dir.path().join(format!("case-{index}.sqlite"));
        let prefix = whistle_platform::config::env_prefix(service);
        let mut command = Command::new(binary(service));
        command
            .env(format!("{prefix}__GRPC__LISTEN"), "127.0.0.1:0")
            .env(format!("{prefix}__ADMIN__LISTEN"), "127.0.0.1:0")
            .env(format!("{prefix}__AUTH__ENABLED"), "false")
            .env(
                format!("{prefix}__DATABASE__URL"),
                format!("sqlite://{}", database.display()),
            )
            .env(format!("{prefix}__NATS__URL"), nats.url())
            .env(format!("{prefix}__NATS__CONNECT_TIMEOUT_SECS"), "5");
        if service == "department-gateway" {
            command.env(
                "WHISTLE_DEPARTMENT_GATEWAY__CATALOGUE__CREDENTIALS_FILE",
                dir.path().join(format!("case-{index}-credentials.json")),
            );
        }
        for (variable, value) in &variables {
            command.env(variable, value);
        }
        let output = output_within(command, std::time::Duration::from_secs(30))
            .unwrap_or_else(|| panic!("case {index}: {service} with {variables:?} kept running"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(64),
            "case {index}: {service} with {variables:?}: {stderr}"
        );
        assert!(
            stderr.contains(named),
            "case {index}: {service}: stderr does not name {named}: {stderr}"
        );
        assert!(
            !database.exists(),
            "case {index}: {service} created its database before refusing the configuration"
        );
    }
    drop(busy);
}

/// Runs a command to its end, or kills it after `limit` and answers None.
fn output_within(mut command: Command, limit: std::time::Duration) -> Option<std::process::Output> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("output"))
}

/// A NATS server that requires a password: the credentials in `nats.url` are used (and the service
/// becomes SERVING); a wrong password keeps it from starting and the message does not show it.
#[tokio::test]
async fn nats_credentials_come_from_the_url() {
    use whistle_e2e::{LocalNatsServer, free_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = LocalNatsServer::start_with_args(
        &dir.path().join("nats"),
        &["--user", "intake", "--pass", "s3cret"],
    )
    .expect("nats-server");
    let authenticated = nats.url().replace("nats://", "nats://intake:s3cret@");
    let port = free_port().expect("port");
    let mut intake = std::process::Command::new(binary("intake"))
        .env("WHISTLE_INTAKE__GRPC__LISTEN", format!("127.0.0.1:{port}"))
        .env("WHISTLE_INTAKE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__AUTH__ENABLED", "false")
        .env(
            "WHISTLE_INTAKE__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("intake.sqlite").display()),
        )
        .env("WHISTLE_INTAKE__NATS__URL", &authenticated)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
            && let Ok(answer) = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && answer.get_ref().status == ServingStatus::Serving as i32
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "intake never SERVING with NATS credentials"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = intake.kill();
    let _ = intake.wait();

    let wrong = nats
        .url()
        .replace("nats://", "nats://intake:wrong-password@");
    let output = std::process::Command::new(binary("intake"))
        .env("WHISTLE_INTAKE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__AUTH__ENABLED", "false")
        .env(
            "WHISTLE_INTAKE__GRPC__LISTEN",
            format!("127.0.0.1:{}", free_port().expect("port")),
        )
        .env(
            "WHISTLE_INTAKE__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("intake-2.sqlite").display()),
        )
        .env("WHISTLE_INTAKE__NATS__URL", &wrong)
        .env("WHISTLE_INTAKE__NATS__CONNECT_TIMEOUT_SECS", "1")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach nats"), "{stderr}");
    assert!(
        !stderr.contains("wrong-password"),
        "the password leaked: {stderr}"
    );
}

/// A database that refuses connections is named with its cause, not as a pool time-out.
#[test]
fn a_refused_database_connection_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = whistle_e2e::LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
    // a port nobody listens on
    let closed = whistle_e2e::free_port().expect("port");
    let mut command = Command::new(binary("intake"));
    command
        .env("WHISTLE_INTAKE__GRPC__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__AUTH__ENABLED", "false")
        .env(
            "WHISTLE_INTAKE__DATABASE__URL",
            format!("postgres://whistle:s3cret@127.0.0.1:{closed}/whistle_intake"),
        )
        .env("WHISTLE_INTAKE__NATS__URL", nats.url());
    let output = output_within(command, std::time::Duration::from_secs(60))
        .expect("intake gives up on a refusing database");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot connect to database") && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
}

/// Logs go to stderr, without colour escapes when stderr is not a terminal; stdout stays empty.
#[test]
fn logs_go_to_stderr_without_colour() {
    use whistle_e2e::free_port;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let output = std::process::Command::new(binary("intake"))
        .env("WHISTLE_INTAKE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("WHISTLE_INTAKE__AUTH__ENABLED", "false")
        .env("WHISTLE_INTAKE__GRPC__LISTEN", "127.0.0.1:0")
        .env(
            "WHISTLE_INTAKE__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("intake.sqlite").display()),
        )
        .env(
            "WHISTLE_INTAKE__NATS__URL",
            format!("nats://127.0.0.1:{port}"),
        )
        .env("WHISTLE_INTAKE__NATS__CONNECT_TIMEOUT_SECS", "1")
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("intake starting"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes in a pipe: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// An admin port in use is a configuration error: exit 64 naming admin.listen.
#[test]
fn an_admin_port_in_use_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let output = Command::new(binary("dispatch"))
        .env("WHISTLE_DISPATCH__ADMIN__LISTEN", address.to_string())
        .env("WHISTLE_DISPATCH__AUTH__ENABLED", "false")
        .env("WHISTLE_DISPATCH__GRPC__LISTEN", "127.0.0.1:0")
        .env(
            "WHISTLE_DISPATCH__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("dispatch.sqlite").display()),
        )
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.listen"), "{stderr}");
    assert!(stderr.contains(&address.to_string()), "{stderr}");
}
