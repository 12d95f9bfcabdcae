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
    ] {
        let output = Command::new(binary(service))
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
        .arg("--config")
        .arg("/nonexistent/whistle.toml")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
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
