//! `[grpc.tls]` on a real service binary (the department-gateway), with a CA and certificates made
//! for the test by the openssl command line: a client that trusts the CA and shows a certificate of
//! that CA is served; a plaintext client, and with mutual TLS a client without a certificate, are
//! refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use whistle_e2e::{Platform, Storage};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line is needed by this test");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// ca.pem, server.pem/server.key (for 127.0.0.1 and localhost), client.pem/client.key.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=whistle-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, subject) in [
        ("server", "/CN=localhost"),
        ("client", "/CN=whistle-gateway"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

async fn health(endpoint: Endpoint) -> Result<i32, String> {
    let channel: Channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_service_serves_trusted_clients_and_refuses_plaintext() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    let certs = platform.dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs folder");
    make_certificates(&certs);
    let file = |name: &str| certs.join(name).display().to_string();
    let prefix = "WHISTLE_DEPARTMENT_GATEWAY__GRPC__TLS__";
    platform
        .gateway
        .set_env(format!("{prefix}CERT_FILE"), file("server.pem"));
    platform
        .gateway
        .set_env(format!("{prefix}KEY_FILE"), file("server.key"));
    platform
        .gateway
        .set_env(format!("{prefix}CLIENT_CA_FILE"), file("ca.pem"));
    platform.gateway.start();

    let ca = Certificate::from_pem(std::fs::read(certs.join("ca.pem")).expect("ca"));
    let identity = Identity::from_pem(
        std::fs::read(certs.join("client.pem")).expect("client cert"),
        std::fs::read(certs.join("client.key")).expect("client key"),
    );
    let address = platform.gateway.address;
    let trusted = || {
        Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(ca.clone())
                    .identity(identity.clone()),
            )
            .expect("tls")
    };
    // the gateway is ready once a trusted client gets SERVING
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match health(trusted()).await {
            Ok(status)
                if status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                break;
            }
            outcome => {
                assert!(
                    Instant::now() < deadline,
                    "no SERVING over TLS within 60 s: {outcome:?}; log: {}",
                    platform.gateway.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // a plaintext client is refused
    let plaintext =
        health(Endpoint::from_shared(format!("http://{address}")).expect("endpoint")).await;
    assert!(plaintext.is_err(), "plaintext served: {plaintext:?}");

    // mutual TLS: a client that trusts the CA but shows no certificate is refused
    let anonymous = health(
        Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(ClientTlsConfig::new().ca_certificate(ca.clone()))
            .expect("tls"),
    )
    .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served: {anonymous:?}"
    );

    // a client that does not trust the server's CA refuses the server
    let other_ca = platform.dir.path().join("other");
    std::fs::create_dir_all(&other_ca).expect("folder");
    make_certificates(&other_ca);
    let untrusting = health(
        Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(
                        std::fs::read(other_ca.join("ca.pem")).expect("ca"),
                    ))
                    .identity(identity.clone()),
            )
            .expect("tls"),
    )
    .await;
    assert!(
        untrusting.is_err(),
        "served under an unknown CA: {untrusting:?}"
    );
    platform.shutdown().await;
}

/// A missing certificate file is a configuration error naming the setting (exit 64).
#[test]
fn a_missing_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(whistle_e2e::binary("department-gateway"))
        .arg("--check-config")
        .env(
            "WHISTLE_DEPARTMENT_GATEWAY__GRPC__TLS__CERT_FILE",
            dir.path().join("absent.pem"),
        )
        .env(
            "WHISTLE_DEPARTMENT_GATEWAY__GRPC__TLS__KEY_FILE",
            dir.path().join("absent.key"),
        )
        .output()
        .expect("run the gateway");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grpc.tls.cert_file"), "{stderr}");
}
