//! `whistle up`: the four services in one process, each with its own SQLite database in the data
//! folder, and a private `nats-server` whose JetStream store lives in the same folder.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use whistle_platform::SystemClock;
use whistle_platform::admin::AdminListener;
use whistle_platform::grpc::GrpcListener;
use whistle_platform::local_nats::LocalNatsServer;
use whistle_platform::service::ServiceConfig;

/// The demo catalogue of docs/domain.md, written to the data folder at start.
pub const DEMO_CATALOGUE: &str = include_str!("../../deploy/demo/catalogue.json");

/// How to run the platform locally.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    pub nats_url: Option<String>,
    pub bind: IpAddr,
    pub intake_port: u16,
    pub dispatch_port: u16,
    pub gateway_port: u16,
    pub evaluation_port: u16,
    /// Admin HTTP ports (/metrics, /healthz, /readyz) of intake, dispatch, gateway, evaluation;
    /// 0 picks a free port. One process: each serves the same metrics.
    pub admin_ports: [u16; 4],
    /// Intake's Open311 GeoReport v2 HTTP port.
    pub open311_port: u16,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            nats_url: None,
            bind: IpAddr::from([127, 0, 0, 1]),
            intake_port: 50051,
            dispatch_port: 50052,
            gateway_port: 50053,
            evaluation_port: 50054,
            admin_ports: [9101, 9102, 9103, 9104],
            open311_port: 50055,
        }
    }
}

/// A running local platform.
#[derive(Debug)]
pub struct LocalPlatform {
    pub intake: SocketAddr,
    pub dispatch: SocketAddr,
    pub gateway: SocketAddr,
    pub evaluation: SocketAddr,
    /// Open311 GeoReport v2 (HTTP) of intake.
    pub open311: SocketAddr,
    /// The demo Open311 API key (`<data-dir>/open311-api-key`).
    pub open311_api_key_file: PathBuf,
    pub nats_url: String,
    /// The nkey seed of `whistle-admin` (every subject) on the private server; `None` with
    /// `--nats-url`.
    pub nats_admin_seed_file: Option<PathBuf>,
    pub credentials_file: PathBuf,
    /// The key pair and the demo people's tokens (docs/security.md).
    pub auth: crate::tokens::LocalAuth,
    /// The admin ports of intake, dispatch, gateway and evaluation.
    pub admin: [SocketAddr; 4],
    shutdown: CancellationToken,
    services: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    nats: Option<LocalNatsServer>,
}

fn sqlite_url(data_dir: &Path, service: &str) -> String {
    format!(
        "sqlite://{}",
        data_dir.join(format!("{service}.sqlite")).display()
    )
}

async fn bind(bind: IpAddr, port: u16, service: &str) -> anyhow::Result<GrpcListener> {
    let address = SocketAddr::new(bind, port);
    GrpcListener::bind(address).map_err(|error| {
        anyhow::anyhow!("{service}: cannot listen on {address}: {error} (is another `whistle up` running? choose another port with --{service}-port)")
    })
}

impl LocalPlatform {
    /// Starts NATS (unless given) and the four services; returns once every listener is bound.
    pub async fn start(options: &LocalOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&options.data_dir).map_err(|error| {
            anyhow::anyhow!(
                "cannot create data folder {}: {error}",
                options.data_dir.display()
            )
        })?;
        let data_dir = std::fs::canonicalize(&options.data_dir)?;
        let (nats, nats_url) = match &options.nats_url {
            Some(url) => {
                check_nats(url).await?;
                (None, url.clone())
            }
            None => {
                // every service logs in as its own user; nobody gets in anonymously
                let registry =
                    whistle_platform::nats_accounts::Registry::from_catalogue_json(DEMO_CATALOGUE)?;
                let server =
                    LocalNatsServer::start_with_accounts(&data_dir.join("nats"), &registry)?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let seed_of = |user: &str| nats.as_ref().and_then(|server| server.seed_file(user));
        let catalogue = data_dir.join("demo-catalogue.json");
        std::fs::write(&catalogue, DEMO_CATALOGUE)?;
        let credentials_file = data_dir.join("demo-credentials.json");
        let auth = crate::tokens::prepare_local(&data_dir)?;
        // this process's clients (the demo, the benchmark) call as the demo people
        crate::client::set_identity(crate::client::Identity {
            token: None,
            personas: auth.tokens.clone(),
        });

        let intake_listener = bind(options.bind, options.intake_port, "intake").await?;
        let dispatch_listener = bind(options.bind, options.dispatch_port, "dispatch").await?;
        let gateway_listener = bind(options.bind, options.gateway_port, "gateway").await?;
        let evaluation_listener = bind(options.bind, options.evaluation_port, "evaluation").await?;
        let open311_address = SocketAddr::new(options.bind, options.open311_port);
        let open311_listener = std::net::TcpListener::bind(open311_address).map_err(|error| {
            anyhow::anyhow!("open311: cannot listen on {open311_address}: {error} (is another `whistle up` running? choose another port with --open311-port)")
        })?;
        let open311 = open311_listener.local_addr()?;
        let open311_api_key_file = demo_open311_key(&data_dir)?;
        let intake = intake_listener.local_addr();
        let dispatch = dispatch_listener.local_addr();
        let gateway = gateway_listener.local_addr();
        let evaluation = evaluation_listener.local_addr();
        let mut admin = Vec::new();
        for (port, flag) in options.admin_ports.into_iter().zip([
            "intake-admin-port",
            "dispatch-admin-port",
            "gateway-admin-port",
            "evaluation-admin-port",
        ]) {
            let address = SocketAddr::new(options.bind, port);
            admin.push(AdminListener::bind(address).map_err(|error| {
                anyhow::anyhow!("{error:#} (is another `whistle up` running? choose another port with --{flag}, 0 for any)")
            })?);
        }

        // defaults < WHISTLE_<SERVICE>__* environment, then what `up` decides
        let mut intake_config = whistle_intake::IntakeConfig::load(None)?;
        intake_config.grpc.listen = intake;
        intake_config.database.url = sqlite_url(&data_dir, "intake");
        intake_config.nats.url = nats_url.clone();
        intake_config.auth.keys_file = Some(auth.public_keys_file.clone());
        if let Some(seed) = seed_of("intake") {
            intake_config.nats.nkey_seed_file = Some(seed);
        }
        intake_config.catalogue.file = Some(catalogue.clone());
        intake_config.open311.enabled = true;
        intake_config.open311.listen = open311;
        intake_config.open311.api_keys_file = Some(open311_api_key_file.clone());

        let mut dispatch_config = whistle_dispatch::DispatchConfig::load(None)?;
        dispatch_config.grpc.listen = dispatch;
        dispatch_config.database.url = sqlite_url(&data_dir, "dispatch");
        dispatch_config.nats.url = nats_url.clone();
        dispatch_config.auth.keys_file = Some(auth.public_keys_file.clone());
        if let Some(seed) = seed_of("dispatch") {
            dispatch_config.nats.nkey_seed_file = Some(seed);
        }
        dispatch_config.catalogue.file = Some(catalogue.clone());

        let mut gateway_config = whistle_department_gateway::GatewayConfig::load(None)?;
        gateway_config.grpc.listen = gateway;
        gateway_config.database.url = sqlite_url(&data_dir, "department-gateway");
        gateway_config.nats.url = nats_url.clone();
        gateway_config.auth.keys_file = Some(auth.public_keys_file.clone());
        if let Some(seed) = seed_of("department-gateway") {
            gateway_config.nats.nkey_seed_file = Some(seed);
        }
        gateway_config.dispatch.url = format!("http://{}", connectable(dispatch));
        gateway_config.catalogue.file = Some(catalogue.clone());
        gateway_config.catalogue.credentials_file = Some(credentials_file.clone());
        gateway_config.dispatch.service_token_file = Some(auth.service_token_file.clone());

        let mut evaluation_config = whistle_evaluation::EvaluationConfig::load(None)?;
        evaluation_config.grpc.listen = evaluation;
        evaluation_config.database.url = sqlite_url(&data_dir, "evaluation");
        evaluation_config.nats.url = nats_url.clone();
        evaluation_config.auth.keys_file = Some(auth.public_keys_file.clone());
        if let Some(seed) = seed_of("evaluation") {
            evaluation_config.nats.nkey_seed_file = Some(seed);
        }
        evaluation_config.catalogue.file = Some(catalogue.clone());

        let shutdown = CancellationToken::new();
        let admin_addresses: Vec<SocketAddr> = admin
            .iter()
            .map(|listener| connectable(listener.local_addr()))
            .collect();
        for listener in admin {
            tokio::spawn(whistle_platform::admin::serve(listener, shutdown.clone()));
        }
        let clock = Arc::new(SystemClock);
        let services = vec![
            (
                "intake",
                tokio::spawn(whistle_intake::run_with_open311(
                    intake_config,
                    intake_listener,
                    Some(open311_listener),
                    clock.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "dispatch",
                tokio::spawn(whistle_dispatch::run(
                    dispatch_config,
                    dispatch_listener,
                    clock.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "department-gateway",
                tokio::spawn(whistle_department_gateway::run(
                    gateway_config,
                    gateway_listener,
                    clock.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "evaluation",
                tokio::spawn(whistle_evaluation::run(
                    evaluation_config,
                    evaluation_listener,
                    clock,
                    shutdown.clone(),
                )),
            ),
        ];
        Ok(Self {
            intake: connectable(intake),
            dispatch: connectable(dispatch),
            gateway: connectable(gateway),
            evaluation: connectable(evaluation),
            open311: connectable(open311),
            open311_api_key_file,
            nats_url,
            nats_admin_seed_file: seed_of("whistle-admin"),
            credentials_file,
            auth,
            admin: admin_addresses
                .try_into()
                .map_err(|_| anyhow::anyhow!("four admin ports"))?,
            shutdown,
            services,
            nats,
        })
    }

    /// Waits until every service listens (each opens its port once it serves), at most
    /// `nats.connect_timeout` plus start-up; a service that fails on the way is reported with its
    /// error.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
        let addresses = [
            self.intake,
            self.dispatch,
            self.gateway,
            self.evaluation,
            self.open311,
        ];
        loop {
            if let Some(index) = self
                .services
                .iter()
                .position(|(_, handle)| handle.is_finished())
            {
                let (name, handle) = self.services.remove(index);
                let error = match handle.await {
                    Ok(Ok(())) => anyhow::anyhow!("{name} stopped during start-up"),
                    Ok(Err(error)) => anyhow::anyhow!("{name} failed to start: {error:#}"),
                    Err(error) => anyhow::anyhow!("{name} crashed during start-up: {error}"),
                };
                self.stop().await;
                return Err(error);
            }
            let mut listening = 0;
            for address in addresses {
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    listening += 1;
                }
            }
            if listening == addresses.len() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                self.stop().await;
                anyhow::bail!("the services did not start listening within 90 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until the gateway wrote the department tokens (it does so right after migrating).
    pub async fn credentials(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.credentials_file)
                && let Ok(tokens) = serde_json::from_str(&text)
            {
                return Ok(tokens);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} was not written within 30s",
                    self.credentials_file.display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Runs until `stop` is cancelled or a service fails; then stops everything in order.
    pub async fn run_until(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut failure = None;
        {
            let waits = self.services.iter_mut().map(|(name, handle)| {
                let name = *name;
                Box::pin(async move { (name, handle.await) })
            });
            let any_finished = futures::future::select_all(waits);
            tokio::select! {
                _ = stop.cancelled() => {}
                ((name, result), _, _) = any_finished => {
                    failure = Some(match result {
                        Ok(Ok(())) => anyhow::anyhow!("{name} stopped unexpectedly"),
                        Ok(Err(error)) => anyhow::anyhow!("{name} failed: {error:#}"),
                        Err(error) => anyhow::anyhow!("{name} crashed: {error}"),
                    });
                }
            }
        }
        self.stop().await;
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Stops the services (they drain and publish what is committed), then NATS.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        for (name, handle) in self.services.drain(..) {
            match tokio::time::timeout(std::time::Duration::from_secs(30), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("{name}: {error:#}"),
                Ok(Err(error)) => eprintln!("{name}: {error}"),
                Err(_) => eprintln!("{name}: did not stop within 30s"),
            }
        }
        if let Some(mut nats) = self.nats.take() {
            nats.stop();
        }
    }
}

/// Fails at once, naming the URL, when no NATS server answers there (instead of four services
/// retrying for the connect timeout).
async fn check_nats(url: &str) -> anyhow::Result<()> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(3))
        .max_reconnects(Some(0));
    match tokio::time::timeout(std::time::Duration::from_secs(5), options.connect(url)).await {
        Ok(Ok(client)) => {
            drop(client);
            Ok(())
        }
        Ok(Err(error)) => Err(anyhow::anyhow!(
            "cannot reach NATS at {}: {error} (is the server running? leave out --nats-url to start a private one)",
            whistle_platform::config::redact_url(url)
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot reach NATS at {}: no answer within 5 s (leave out --nats-url to start a private one)",
            whistle_platform::config::redact_url(url)
        )),
    }
}

/// The demo Open311 API key in `<data_dir>/open311-api-key`: kept across runs, made on the first.
fn demo_open311_key(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let file = data_dir.join("open311-api-key");
    let existing = std::fs::read_to_string(&file).unwrap_or_default();
    if existing.trim().is_empty() {
        let key = uuid::Uuid::new_v4().simple().to_string();
        std::fs::write(&file, format!("{key}\n"))
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", file.display()))?;
    }
    Ok(file)
}

/// 0.0.0.0 is where we listen, not where clients connect.
fn connectable(address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), address.port())
    } else {
        address
    }
}
