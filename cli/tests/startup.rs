//! `whistle up` start-up failures name their cause and exit 1, never a panic (exit 101) and never
//! after printing "whistle is up"; `whistle demo` names where it looked for the credentials.

use std::process::{Command, Output};

fn whistle(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whistle"))
        .arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--intake-port",
            "0",
            "--dispatch-port",
            "0",
            "--gateway-port",
            "0",
            "--evaluation-port",
            "0",
            "--intake-admin-port",
            "0",
            "--dispatch-admin-port",
            "0",
            "--gateway-admin-port",
            "0",
            "--evaluation-admin-port",
            "0",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run whistle")
}

fn assert_failed_naming(output: &Output, named: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("whistle is up"),
        "claimed to be up: {stdout}"
    );
    assert!(
        stderr.contains(named),
        "stderr does not name {named:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_nats_url_is_named() {
    let folder = tempfile::tempdir().expect("tempdir");
    let port = whistle_platform::local_nats::free_port().expect("port");
    let url = format!("nats://127.0.0.1:{port}");
    let output = whistle(&["--nats-url", &url], folder.path());
    assert_failed_naming(&output, &format!("cannot reach NATS at {url}"));
}

#[test]
fn nats_servers_own_error_is_shown() {
    // a store nats-server cannot use (a file where its jetstream folder goes): root or not, it
    // refuses, and says why in its own words
    let folder = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(folder.path().join("nats")).expect("nats folder");
    std::fs::write(folder.path().join("nats/jetstream"), b"not a folder").expect("file");
    let output = whistle(&[], folder.path());
    assert_failed_naming(&output, "nats-server exited at start");
    assert_failed_naming(&output, "storage directory");
}

#[test]
fn a_port_in_use_is_named() {
    let folder = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_whistle"))
        .args(["up", "--data-dir"])
        .arg(folder.path())
        .args(["--intake-port", &port])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run whistle");
    assert_failed_naming(&output, &format!("127.0.0.1:{port}"));
    assert_failed_naming(&output, "--intake-port");
}

#[test]
fn demo_names_where_it_looked_for_credentials() {
    let folder = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_whistle"))
        .arg("demo")
        .arg("--data-dir")
        .arg(folder.path())
        .output()
        .expect("run whistle");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = folder.path().join("demo-credentials.json");
    assert!(stderr.contains(&expected.display().to_string()), "{stderr}");
}
