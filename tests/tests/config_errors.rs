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
