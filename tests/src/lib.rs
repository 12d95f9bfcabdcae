//! Harness for the end-to-end tests: the real service binaries as child processes, configured
//! through their environment the way a deployment configures them, a private nats-server, and
//! SQLite files or fresh PostgreSQL databases.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use whistle_platform::auth::{BearerLayer, Role, SigningKey, TokenRequest, WithBearer};
pub use whistle_platform::local_nats::{LocalNatsServer, free_port};

/// A client channel that adds the harness's bearer token for each call.
pub type AuthedChannel = WithBearer<tonic::transport::Channel>;

/// The street of the demo catalogue the harness's people work in (车城路街道).
pub const DEMO_STREET: &str = "420303003";
/// Its district (张湾区).
pub const DEMO_DISTRICT: &str = "420303";
/// Its city (十堰市).
pub const DEMO_CITY: &str = "420300";

/// The signing key of a test platform and the people it issues tokens to.
#[derive(Debug, Clone)]
pub struct TestAuth {
    pub key: SigningKey,
}

impl TestAuth {
    /// A new key pair.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate().expect("signing key"),
        }
    }

    /// A token for `subject` with `role` in `region`, valid for an hour.
    pub fn token(&self, subject: &str, role: Role, region: &str) -> String {
        self.key
            .issue(&TokenRequest::new(
                subject,
                role,
                region,
                Duration::from_secs(3600),
            ))
            .expect("token")
    }

    /// The harness's default person of `role`: in the demo street for street operators and
    /// community workers (a community worker scoped to the whole street, so a test may verify a
    /// case in any of its communities), the district for reporters, call-back operators and
    /// supervisors, the city for the administrator, `department-gateway` for the service role.
    pub fn default_token(&self, role: Role) -> String {
        let (subject, region) = match role {
            Role::StreetOperator => ("chechenglu-dispatch", DEMO_STREET),
            Role::CommunityWorker => ("chechenglu-community-worker", DEMO_STREET),
            Role::Reporter => ("grid-worker-17", DEMO_DISTRICT),
            Role::CallbackOperator => ("zhangwan-callback", DEMO_DISTRICT),
            Role::Supervisor => ("zhangwan-supervisor", DEMO_DISTRICT),
            Role::Admin => ("catalogue-admin", DEMO_CITY),
            Role::Service => ("department-gateway", DEMO_CITY),
        };
        self.token(subject, role, region)
    }

    /// A layer choosing, per call, the default person of the role that may make it
    /// ([`role_for_call`]); department-gateway calls get none (departments send their own token).
    pub fn layer(&self) -> BearerLayer {
        let tokens: BTreeMap<Role, String> = Role::ALL
            .into_iter()
            .map(|role| (role, self.default_token(role)))
            .collect();
        BearerLayer::per_call(std::sync::Arc::new(move |path: &str| {
            role_for_call(path).and_then(|role| tokens.get(&role).cloned())
        }))
    }

    /// `channel` with the right token attached to each call.
    pub fn wrap(&self, channel: tonic::transport::Channel) -> AuthedChannel {
        tower::Layer::layer(&self.layer(), channel)
    }

    /// A lazily connecting channel to `url` that attaches the right token to each call.
    pub fn channel(&self, url: &str) -> AuthedChannel {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect_lazy();
        tower::Layer::layer(&self.layer(), channel)
    }
}

/// The role that makes a call in the existing tests: the street operator for dispatch's street
/// work and most reads, the community worker to verify, a reporter to report, the administrator
/// for the catalogue, the call-back operator for satisfaction, a supervisor for scorecards, the
/// gateway's service identity for department actions; none for the department gateway.
pub fn role_for_call(path: &str) -> Option<Role> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let role = match (service, method) {
        (service, _) if service.starts_with("whistle.gateway.") => return None,
        (_, "VerifyCase") => Role::CommunityWorker,
        (_, "RecordDepartmentAction") => Role::Service,
        (_, "PutRoute" | "ImportGrids" | "ClosePeriod") => Role::Admin,
        (_, "SubmitReport" | "AttachEvidence") => Role::Reporter,
        (_, "RecordSatisfaction") => Role::CallbackOperator,
        (_, "GetScorecard" | "GetRanking" | "ExplainScore") => Role::Supervisor,
        _ => Role::StreetOperator,
    };
    Some(role)
}

/// The four services, by binary.
pub const SERVICES: [&str; 4] = ["intake", "dispatch", "department-gateway", "evaluation"];

/// Where cargo put the service binaries: next to the folder of the running test executable.
pub fn binary(service: &str) -> PathBuf {
    let name = format!("whistle-{service}");
    let test_executable = std::env::current_exe().expect("test executable path");
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join(&name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo test --workspace` does; or `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// The demo catalogue of the repository (`deploy/demo/catalogue.json`).
pub fn demo_catalogue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/catalogue.json")
}

/// A request carrying a department's bearer token, as department systems send it.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// The demo's first report: a grid worker sees garbage overflowing at 中岳路2号 (routed to the
/// sanitation office, auto-whistled).
pub fn garbage_report(request_id: &str) -> whistle_proto::intake::SubmitReportRequest {
    use whistle_proto::types::{Channel, Place, Severity};
    whistle_proto::intake::SubmitReportRequest {
        request_id: request_id.into(),
        channel: Channel::GridPatrol as i32,
        reporter_id: "grid-worker-17".into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: "中岳路2号大垃圾桶满溢，垃圾堆到路面，三个小区共用".into(),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.6369,
            lng: 110.7986,
            address: "中岳路2号".into(),
        }),
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

/// Which database the services use.
#[derive(Debug, Clone)]
pub enum Storage {
    Sqlite,
    /// Admin URL of a PostgreSQL server; each service gets a fresh database created there.
    Postgres {
        admin_url: String,
    },
}

/// The PostgreSQL admin URL for tests: `WHISTLE_TEST_POSTGRES_URL`, else the local server.
pub fn postgres_admin_url() -> String {
    std::env::var("WHISTLE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// One running service binary.
#[derive(Debug)]
pub struct ServiceProcess {
    pub service: &'static str,
    pub address: SocketAddr,
    /// The admin HTTP port: `/metrics`, `/healthz`, `/readyz`.
    pub admin_address: SocketAddr,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary(self.service))
            .env("RUST_LOG", "info")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn service");
        self.child = Some(child);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// SIGTERM, then wait for the process to exit (it drains first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "{} exited with {status} after SIGTERM; log:\n{}",
                        self.service,
                        self.log_tail()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            panic!(
                "{} did not stop within 30s of SIGTERM; log:\n{}",
                self.service,
                self.log_tail()
            );
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the binary again with the same configuration.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.service);
        self.spawn();
    }

    /// The process id while it runs, e.g. to read its memory in `/proc/<pid>/status`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sets (or replaces) an environment variable for the next start.
    pub fn set_env(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.env.insert(key.into(), value.into());
    }

    /// The service's database URL, for tests that check what it stored.
    pub fn database_url(&self) -> String {
        let key = format!("{}__DATABASE__URL", env_prefix(self.service));
        self.env
            .get(&key)
            .cloned()
            .expect("database url is configured")
    }

    /// A second instance of the same service: same configuration and database, its own port and
    /// log file (`<service>-<name>.log`). Not started.
    pub fn replica(&self, name: &str) -> ServiceProcess {
        let port = free_port().expect("port");
        let admin_port = free_port().expect("port");
        let mut env = self.env.clone();
        env.insert(
            format!("{}__GRPC__LISTEN", env_prefix(self.service)),
            format!("127.0.0.1:{port}"),
        );
        env.insert(
            format!("{}__ADMIN__LISTEN", env_prefix(self.service)),
            format!("127.0.0.1:{admin_port}"),
        );
        ServiceProcess {
            service: self.service,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_address: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            env,
            log: self
                .log
                .with_file_name(format!("{}-{name}.log", self.service)),
            child: None,
        }
    }

    /// Everything the service logged so far (stdout and stderr, over all its starts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines the service logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// NATS, four service processes and their databases, torn down on drop.
#[derive(Debug)]
pub struct Platform {
    pub dir: tempfile::TempDir,
    pub nats: LocalNatsServer,
    pub intake: ServiceProcess,
    pub dispatch: ServiceProcess,
    pub gateway: ServiceProcess,
    pub evaluation: ServiceProcess,
    pub credentials_file: PathBuf,
    /// The key every service verifies tokens with, and the harness's people.
    pub auth: TestAuth,
    postgres: Option<(String, Vec<String>)>,
}

fn env_prefix(service: &str) -> String {
    format!("WHISTLE_{}", service.to_uppercase().replace('-', "_"))
}

impl Platform {
    /// Prepares everything; services are started with [`Platform::start`] (all) or one by one.
    pub async fn prepare(storage: Storage) -> Platform {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
        let catalogue = demo_catalogue();
        let credentials_file = dir.path().join("demo-credentials.json");
        let auth = TestAuth::generate();
        let keys_file = dir.path().join("auth-public-keys.txt");
        let service_token_file = dir.path().join("department-gateway.token");
        auth.key
            .write(&dir.path().join("auth-signing-key.pem"), &keys_file)
            .expect("write keys");
        std::fs::write(&service_token_file, auth.default_token(Role::Service))
            .expect("write service token");
        let mut postgres = None;
        let mut database_urls = BTreeMap::new();
        match &storage {
            Storage::Sqlite => {
                for service in SERVICES {
                    database_urls.insert(
                        service,
                        format!(
                            "sqlite://{}",
                            dir.path().join(format!("{service}.sqlite")).display()
                        ),
                    );
                }
            }
            Storage::Postgres { admin_url } => {
                let admin = sea_orm::Database::connect(admin_url.as_str())
                    .await
                    .unwrap_or_else(|error| {
                        panic!("PostgreSQL at {admin_url} is required for this test: {error}")
                    });
                let run = uuid::Uuid::now_v7().simple().to_string();
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base.to_string())
                    .expect("admin url has a database");
                let mut names = Vec::new();
                for service in SERVICES {
                    let name = format!(
                        "whistle_e2e_{}_{}",
                        &run[run.len() - 12..],
                        service.replace('-', "_")
                    );
                    sea_orm::ConnectionTrait::execute_unprepared(
                        &admin,
                        &format!("CREATE DATABASE {name}"),
                    )
                    .await
                    .expect("create database");
                    database_urls.insert(service, format!("{base}/{name}"));
                    names.push(name);
                }
                postgres = Some((admin_url.clone(), names));
            }
        }
        let mut processes = Vec::new();
        for service in SERVICES {
            let port = free_port().expect("port");
            let admin_port = free_port().expect("port");
            let prefix = env_prefix(service);
            let mut env = BTreeMap::new();
            env.insert(
                format!("{prefix}__GRPC__LISTEN"),
                format!("127.0.0.1:{port}"),
            );
            env.insert(
                format!("{prefix}__ADMIN__LISTEN"),
                format!("127.0.0.1:{admin_port}"),
            );
            env.insert(
                format!("{prefix}__DATABASE__URL"),
                database_urls[service].clone(),
            );
            env.insert(format!("{prefix}__NATS__URL"), nats.url());
            env.insert(
                format!("{prefix}__AUTH__KEYS_FILE"),
                keys_file.display().to_string(),
            );
            env.insert(
                format!("{prefix}__CATALOGUE__FILE"),
                catalogue.display().to_string(),
            );
            env.insert(format!("{prefix}__OUTBOX__POLL_INTERVAL_MS"), "200".into());
            if service == "intake" {
                // these tests send many reports of one problem at one place and count its whistles:
                // each must open its own case (merging has its own tests in services/intake)
                env.insert(format!("{prefix}__MERGING__ENABLED"), "false".into());
            }
            processes.push(ServiceProcess {
                service,
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                admin_address: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                env,
                log: dir.path().join(format!("{service}.log")),
                child: None,
            });
        }
        let [intake, dispatch, mut gateway, evaluation]: [ServiceProcess; 4] =
            processes.try_into().expect("four");
        gateway.env.insert(
            "WHISTLE_DEPARTMENT_GATEWAY__DISPATCH__URL".into(),
            dispatch.url(),
        );
        gateway.env.insert(
            "WHISTLE_DEPARTMENT_GATEWAY__CATALOGUE__CREDENTIALS_FILE".into(),
            credentials_file.display().to_string(),
        );
        gateway.env.insert(
            "WHISTLE_DEPARTMENT_GATEWAY__DISPATCH__SERVICE_TOKEN_FILE".into(),
            service_token_file.display().to_string(),
        );
        Platform {
            dir,
            nats,
            intake,
            dispatch,
            gateway,
            evaluation,
            credentials_file,
            auth,
            postgres,
        }
    }

    /// Starts every service and waits until each answers health checks with SERVING.
    pub async fn start(storage: Storage) -> Platform {
        let mut platform = Self::prepare(storage).await;
        platform.start_all().await;
        platform
    }

    /// Starts every service of a prepared platform and waits until each is SERVING.
    pub async fn start_all(&mut self) {
        for process in self.processes_mut() {
            process.start();
        }
        for process in [
            &self.intake,
            &self.dispatch,
            &self.gateway,
            &self.evaluation,
        ] {
            wait_serving(process).await;
        }
    }

    fn processes_mut(&mut self) -> [&mut ServiceProcess; 4] {
        [
            &mut self.intake,
            &mut self.dispatch,
            &mut self.gateway,
            &mut self.evaluation,
        ]
    }

    /// A channel to `process` whose calls carry the harness's token for each call
    /// ([`role_for_call`]).
    pub fn channel(&self, process: &ServiceProcess) -> AuthedChannel {
        self.auth.channel(&process.url())
    }

    /// The department tokens the gateway wrote.
    pub async fn credentials(&self) -> BTreeMap<String, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.credentials_file)
                && let Ok(tokens) = serde_json::from_str::<BTreeMap<String, String>>(&text)
                && !tokens.is_empty()
            {
                return tokens;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "credentials file never written; gateway log:\n{}",
                self.gateway.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every service with SIGTERM (asserting a clean exit) and drops the databases.
    pub async fn shutdown(mut self) {
        for process in self.processes_mut() {
            process.stop();
        }
        if let Some((admin_url, names)) = self.postgres.take() {
            let admin = sea_orm::Database::connect(admin_url.as_str())
                .await
                .expect("admin");
            for name in names {
                sea_orm::ConnectionTrait::execute_unprepared(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await
                .expect("drop database");
            }
        }
    }
}

/// Waits until the service's `grpc.health.v1.Health/Check` answers SERVING.
pub async fn wait_serving(process: &ServiceProcess) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(process.url())
            .expect("url")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel);
            if let Ok(response) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && response.get_ref().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} not SERVING within 60s; log:\n{}",
            process.service,
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gRPC services a process lists through server reflection (what `grpcurl list` shows).
pub async fn reflected_services(process: &ServiceProcess) -> Vec<String> {
    use futures::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(process.url())
        .expect("url")
        .connect()
        .await
        .expect("connect for reflection");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}
