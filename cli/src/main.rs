use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use whistle::bench::{self, BenchOptions};
use whistle::client::{Endpoints, department_token, status_error, with_token};
use whistle::local::{LocalOptions, LocalPlatform};
use whistle::output::{self, Format};
use whistle_proto::dispatch::{GetCaseRequest, VerifyCaseRequest};
use whistle_proto::evaluation::GetScorecardRequest;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ResolveRequest, SubscribeRequest,
};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::types::{Channel, Place, Severity};

/// Whistle: the street whistles, departments report (街道吹哨、部门报到).
#[derive(Debug, Parser)]
#[command(name = "whistle", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    identity: IdentityArgs,
}

/// Who the client commands call as (docs/security.md).
#[derive(Debug, Args)]
struct IdentityArgs {
    /// Call as this demo person of `whistle up`: street, community, community:<code>, reporter,
    /// callback, supervisor or admin. Without it each call is made by the person whose role may
    /// make it (report as the grid worker, verify as the community, scorecard as the supervisor).
    #[arg(long = "as", global = true, value_name = "PERSON")]
    as_person: Option<String>,
    /// The people's tokens `whistle up` wrote.
    #[arg(
        long,
        global = true,
        env = "WHISTLE_TOKENS_FILE",
        default_value = "data/demo-tokens.json"
    )]
    tokens_file: PathBuf,
    /// A bearer token to send on every call instead (from `whistle token issue`).
    #[arg(
        long,
        global = true,
        env = "WHISTLE_BEARER_TOKEN",
        hide_env_values = true
    )]
    bearer_token: Option<String>,
}

impl IdentityArgs {
    fn identity(&self) -> anyhow::Result<whistle::client::Identity> {
        let personas = match whistle::tokens::read_tokens(&self.tokens_file) {
            Ok(personas) => personas,
            Err(error) if self.as_person.is_some() => return Err(error),
            Err(_) => Default::default(),
        };
        let token = match (&self.bearer_token, &self.as_person) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(person)) => Some(personas.get(person).cloned().ok_or_else(|| {
                anyhow::anyhow!(
                    "--as {person}: no such person in {} (there are: {})",
                    self.tokens_file.display(),
                    personas.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?),
            (None, None) => None,
        };
        Ok(whistle::client::Identity { token, personas })
    }
}

#[derive(Debug, Args)]
struct EndpointArgs {
    #[arg(
        long,
        global = true,
        env = "WHISTLE_INTAKE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    intake_url: String,
    #[arg(
        long,
        global = true,
        env = "WHISTLE_DISPATCH_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    dispatch_url: String,
    #[arg(
        long,
        global = true,
        env = "WHISTLE_GATEWAY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    gateway_url: String,
    #[arg(
        long,
        global = true,
        env = "WHISTLE_EVALUATION_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    evaluation_url: String,
}

#[derive(Debug, Args)]
struct DepartmentArgs {
    /// The department acting, e.g. zw-sanitation.
    #[arg(long)]
    department: String,
    /// Its bearer token; read from the credentials of `whistle up` when absent.
    #[arg(long, env = "WHISTLE_TOKEN")]
    token: Option<String>,
    #[command(flatten)]
    credentials: CredentialsArgs,
}

#[derive(Debug, Args)]
struct CredentialsArgs {
    /// The data folder of the running `whistle up`; its demo-credentials.json holds the tokens.
    #[arg(long, env = "WHISTLE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The credentials file itself, instead of <data-dir>/demo-credentials.json.
    #[arg(long)]
    credentials: Option<PathBuf>,
}

impl CredentialsArgs {
    fn path(&self) -> PathBuf {
        whistle::client::credentials_path(&self.data_dir, self.credentials.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run intake, dispatch, department-gateway and evaluation locally with SQLite and NATS.
    Up {
        /// Folder for the databases, the NATS store and the demo credentials.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Use this NATS server instead of starting a private one.
        #[arg(long, env = "WHISTLE_NATS_URL")]
        nats_url: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        #[arg(long, default_value_t = 50051)]
        intake_port: u16,
        #[arg(long, default_value_t = 50052)]
        dispatch_port: u16,
        #[arg(long, default_value_t = 50053)]
        gateway_port: u16,
        #[arg(long, default_value_t = 50054)]
        evaluation_port: u16,
        /// Admin HTTP port (/metrics, /healthz, /readyz) of intake; 0 picks a free one.
        #[arg(long, default_value_t = 9101)]
        intake_admin_port: u16,
        #[arg(long, default_value_t = 9102)]
        dispatch_admin_port: u16,
        #[arg(long, default_value_t = 9103)]
        gateway_admin_port: u16,
        #[arg(long, default_value_t = 9104)]
        evaluation_admin_port: u16,
        /// Logs on stderr as `text` (colour only on a terminal) or `json`, one object per line.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Intake's Open311 GeoReport v2 HTTP port.
        #[arg(long, default_value_t = 50055)]
        open311_port: u16,
        /// Also play the demo scenario (garbage overflow, fire lane, property management).
        #[arg(long)]
        demo: bool,
    },
    /// Grid boundaries: import them, find the grid of a position, report by position.
    Grid {
        #[command(subcommand)]
        command: whistle::grid::GridCommand,
    },
    /// A service's outbox: events it could not publish and parked.
    Outbox {
        #[command(subcommand)]
        command: whistle::outbox::OutboxCommand,
    },
    /// Generate the production NATS users (nkeys) from the registry: services, departments, supervisors.
    NatsConfig(whistle::nats_config::NatsConfigArgs),
    /// Department API tokens at the gateway: issue, rotate, revoke, list.
    Credentials {
        #[command(subcommand)]
        command: whistle::credentials::CredentialsCommand,
    },
    /// Play the demo scenario against running services.
    Demo {
        #[command(flatten)]
        credentials: CredentialsArgs,
    },
    /// Submit a report as a grid worker.
    Report {
        #[arg(long, default_value = "E-01-03")]
        category: String,
        #[arg(long, default_value = "420303003001001")]
        grid: String,
        #[arg(long, default_value_t = 32.6369)]
        lat: f64,
        #[arg(long, default_value_t = 110.7986)]
        lng: f64,
        #[arg(long, default_value = "中岳路2号")]
        address: String,
        #[arg(long, default_value = "垃圾满溢，堆到路面")]
        description: String,
        /// routine, urgent, emergency or complex.
        #[arg(long, default_value = "urgent")]
        severity: String,
        /// The person reporting (a hotline operator enters the resident's id); the credential's
        /// subject when empty.
        #[arg(long, default_value = "")]
        reporter: String,
        /// Idempotency key; a fresh one when absent.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a case with its assignments and timeline.
    Case { case_id: String },
    /// Stream a department's notices (whistles and assignment events).
    Watch {
        #[command(flatten)]
        department: DepartmentArgs,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Acknowledge an assignment (报到).
    Ack {
        assignment_id: String,
        #[command(flatten)]
        department: DepartmentArgs,
        #[arg(long)]
        person: String,
    },
    /// Check in on site (到场).
    CheckIn {
        assignment_id: String,
        #[command(flatten)]
        department: DepartmentArgs,
        #[arg(long)]
        lat: f64,
        #[arg(long)]
        lng: f64,
        /// wgs84, gcj02 (AMap, Tencent) or bd09 (Baidu); dispatch converts before measuring.
        #[arg(long, default_value = "wgs84")]
        datum: String,
    },
    /// Resolve an assignment (办结).
    Resolve {
        assignment_id: String,
        #[command(flatten)]
        department: DepartmentArgs,
        #[arg(long)]
        resolution: String,
    },
    /// Verify a case as the community (核查).
    Verify {
        case_id: String,
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value = "")]
        note: String,
        /// Deprecated: the verifier is the credential's subject; when given it must be the same.
        #[arg(long, default_value = "")]
        verifier: String,
    },
    /// A department's scorecard for a period ("2026-11", "2026-Q4", "2026"); with --format csv or
    /// json, a closed period's frozen cards of every department (or --department's), for filing.
    Scorecard {
        department: Option<String>,
        #[arg(long = "department", conflicts_with = "department")]
        department_option: Option<String>,
        #[arg(long)]
        period: Option<String>,
        /// `csv` or `json`: export the closed period (docs/evaluation.md, "Export").
        #[arg(long)]
        format: Option<String>,
        /// Only the cases in this street or community (its division code): its view of the
        /// department.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Close, reopen or rebuild evaluation (docs/evaluation.md).
    Evaluation {
        #[command(subcommand)]
        command: whistle::evaluation::EvaluationCommand,
    },
    /// Make an Ed25519 key pair for signing bearer tokens: the private key (0600) and the public
    /// keys file services verify with (`auth.keys_file`).
    Keygen {
        /// Folder to write signing-key.pem and public-keys.txt into.
        #[arg(long, default_value = "data/auth")]
        out_dir: PathBuf,
    },
    /// Bearer tokens for people and services.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Measure the whole lifecycle on this machine, beside its raw limits (see docs/benchmarks.md).
    /// `whistle bench --json FILE` also writes the report as JSON.
    Bench(BenchArgs),
}

/// The flags of `whistle bench`.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Cases driven through the whole lifecycle (report → whistle → 报到/到场/办结 → 核查 →
    /// counted on the scorecard).
    #[arg(long, default_value_t = 2000)]
    cases: usize,
    /// Open loop: arrivals per second. Without it, as fast as --in-flight open cases allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Cases open at a time (between SubmitReport and verification) without --rate.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// PostgreSQL admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres: a fresh database
    /// per service on that server, dropped afterwards. SQLite files otherwise.
    #[arg(long)]
    postgres: Option<String>,
    /// Cases stored before the measured run.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Folder of the whistle-<service> binaries (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Bearer token for SubmitReport (the reporter role), when the services require one.
    #[arg(long, env = "WHISTLE_BENCH_REPORTER_TOKEN", hide_env_values = true)]
    reporter_token: Option<String>,
    /// Bearer token for VerifyCase (the community role).
    #[arg(long, env = "WHISTLE_BENCH_COMMUNITY_TOKEN", hide_env_values = true)]
    community_token: Option<String>,
    /// Bearer token for GetScorecard (the observer role).
    #[arg(long, env = "WHISTLE_BENCH_OBSERVER_TOKEN", hide_env_values = true)]
    observer_token: Option<String>,
    /// Give up when no case progressed for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Start intake, the gateway and evaluation at this niceness (1–19; dispatch stays at 0), the
    /// CPU weighting docs/operations.md recommends where services share cores. 0: equal priority.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    others_nice: u8,
}

/// `whistle bench`'s own command line, parsed apart from the others: its `--json` names the report
/// file, where the other commands' global `--json` is a switch.
#[derive(Debug, Parser)]
#[command(
    name = "whistle bench",
    about = "Measure the whole lifecycle on this machine, beside its raw limits (see docs/benchmarks.md)"
)]
struct BenchCli {
    #[command(flatten)]
    args: BenchArgs,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

async fn run_bench(arguments: BenchArgs, json: Option<PathBuf>) -> anyhow::Result<()> {
    let BenchArgs {
        cases,
        rate,
        in_flight,
        postgres,
        preload,
        bin_dir,
        reporter_token,
        community_token,
        observer_token,
        stall_secs,
        others_nice,
    } = arguments;
    if cases == 0 || in_flight == 0 {
        anyhow::bail!("--cases and --in-flight must be at least 1");
    }
    if let Some(rate) = rate
        && !(rate > 0.0 && rate.is_finite())
    {
        anyhow::bail!("--rate must be a positive number of arrivals per second, got {rate}");
    }
    bench::run(BenchOptions {
        cases,
        rate,
        in_flight,
        postgres,
        json,
        preload,
        bin_dir,
        reporter_token,
        community_token,
        observer_token,
        stall: std::time::Duration::from_secs(stall_secs.max(1)),
        others_nice,
    })
    .await?;
    Ok(())
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a token and print it.
    Issue {
        /// street_operator, community_worker, reporter (grid_worker, hotline_operator),
        /// callback_operator, supervisor, admin or service.
        #[arg(long)]
        role: String,
        /// Region scope: 420300 (city), 420303 (district), a street, community or grid code.
        #[arg(long)]
        region: String,
        /// Who: a person's id or a service's name; the actor recorded in events.
        #[arg(long)]
        subject: Option<String>,
        /// How long it is valid: 90s, 15m, 12h, 30d.
        #[arg(long, default_value = "12h")]
        ttl: String,
        /// The private key file.
        #[arg(long, default_value = "data/auth/signing-key.pem")]
        key: PathBuf,
    },
}

fn severity(value: &str) -> anyhow::Result<Severity> {
    Ok(match value {
        "routine" => Severity::Routine,
        "urgent" => Severity::Urgent,
        "emergency" => Severity::Emergency,
        "complex" => Severity::Complex,
        other => {
            anyhow::bail!("--severity must be routine, urgent, emergency or complex, got {other:?}")
        }
    })
}

fn main() -> ExitCode {
    let arguments: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let bench = (arguments.get(1).is_some_and(|argument| argument == "bench")).then(|| {
        BenchCli::parse_from(
            std::iter::once(std::ffi::OsString::from("whistle bench"))
                .chain(arguments.iter().skip(2).cloned()),
        )
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("whistle: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match bench {
        Some(bench) => runtime.block_on(run_bench(bench.args, bench.json)),
        None => runtime.block_on(run(Cli::parse_from(arguments))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("whistle: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = if cli.json { Format::Json } else { Format::Text };
    let endpoints = Endpoints {
        intake: cli.endpoints.intake_url,
        dispatch: cli.endpoints.dispatch_url,
        gateway: cli.endpoints.gateway_url,
        evaluation: cli.endpoints.evaluation_url,
    };
    if !matches!(
        cli.command,
        Command::Up { .. } | Command::Bench { .. } | Command::Keygen { .. } | Command::Token { .. }
    ) {
        whistle::client::set_identity(cli.identity.identity()?);
    }
    match cli.command {
        Command::Keygen { out_dir } => {
            std::fs::create_dir_all(&out_dir)?;
            let private = out_dir.join("signing-key.pem");
            if private.exists() {
                anyhow::bail!(
                    "{} exists already: move it away to make a new key",
                    private.display()
                );
            }
            let key = whistle_platform::auth::SigningKey::generate()?;
            let public = out_dir.join("public-keys.txt");
            key.write(&private, &public)?;
            println!("key id      {}", key.kid);
            println!("public key  {}", key.public_key);
            println!("private key {} (0600)", private.display());
            println!(
                "services    auth.keys_file = {:?}",
                public.display().to_string()
            );
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    role,
                    region,
                    subject,
                    ttl,
                    key,
                },
        } => {
            let role = whistle_platform::auth::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!(
                    "--role {role:?}: one of street_operator, community_worker, reporter, grid_worker, hotline_operator, callback_operator, supervisor, admin, service"
                )
            })?;
            if region.is_empty() || !region.chars().all(|c| c.is_ascii_digit()) {
                anyhow::bail!(
                    "--region must be a region code of digits, e.g. 420303, got {region:?}"
                );
            }
            let subject = subject.unwrap_or_else(|| format!("{role}-{region}"));
            let key = whistle_platform::auth::SigningKey::read(&key)?;
            let token = key.issue(&whistle_platform::auth::TokenRequest::new(
                subject,
                role,
                region,
                whistle::tokens::parse_ttl(&ttl)?,
            ))?;
            println!("{token}");
        }
        Command::Up {
            data_dir,
            nats_url,
            bind,
            intake_port,
            dispatch_port,
            gateway_port,
            evaluation_port,
            intake_admin_port,
            dispatch_admin_port,
            gateway_admin_port,
            evaluation_admin_port,
            log_format,
            open311_port,
            demo,
        } => {
            // quiet by default so the addresses (and the demo) stay readable; RUST_LOG=info for more
            let telemetry_config = whistle_platform::config::TelemetryConfig {
                log_filter: "warn".into(),
                log_format,
                ..Default::default()
            };
            let _telemetry = whistle_platform::telemetry::init("whistle", &telemetry_config)?;
            let options = LocalOptions {
                data_dir,
                nats_url,
                bind,
                intake_port,
                dispatch_port,
                gateway_port,
                evaluation_port,
                admin_ports: [
                    intake_admin_port,
                    dispatch_admin_port,
                    gateway_admin_port,
                    evaluation_admin_port,
                ],
                open311_port,
            };
            let mut platform = LocalPlatform::start(&options).await?;
            platform.wait_ready().await?;
            let tokens = platform.credentials().await?;
            println!("whistle is up (Ctrl-C stops it)");
            println!("  intake              {}", platform.intake);
            println!("  dispatch            {}", platform.dispatch);
            println!("  department-gateway  {}", platform.gateway);
            println!("  evaluation          {}", platform.evaluation);
            println!(
                "  open311 (HTTP)      http://{} (api key in {})",
                platform.open311,
                platform.open311_api_key_file.display()
            );
            println!("  nats                {}", platform.nats_url);
            if let Some(seed) = &platform.nats_admin_seed_file {
                println!(
                    "  nats login          nkey users only; operator seed {} (nats --nkey {} ...)",
                    seed.display(),
                    seed.display()
                );
            }
            let [
                intake_admin,
                dispatch_admin,
                gateway_admin,
                evaluation_admin,
            ] = platform.admin;
            println!(
                "  metrics             http://{intake_admin}/metrics (also {dispatch_admin}, {gateway_admin}, {evaluation_admin}: one process, the same metrics)"
            );
            println!(
                "  department tokens   {}",
                platform.credentials_file.display()
            );
            println!(
                "  people's tokens     {} (--as street|community|reporter|callback|supervisor|admin)",
                platform.auth.tokens_file.display()
            );
            let stop = whistle_platform::shutdown::cancel_on_signals();
            if demo {
                let local = Endpoints {
                    intake: format!("http://{}", platform.intake),
                    dispatch: format!("http://{}", platform.dispatch),
                    gateway: format!("http://{}", platform.gateway),
                    evaluation: format!("http://{}", platform.evaluation),
                };
                tokio::spawn(async move {
                    match whistle::demo::play(&local, tokens).await {
                        // on stderr with the logs: the cards' last line, how the period is
                        // closed, stays the last line of the demo's output
                        Ok(_) => {
                            eprintln!("demo finished; the platform keeps running (Ctrl-C stops it)")
                        }
                        Err(error) => eprintln!("demo failed: {error:#}"),
                    }
                });
            }
            platform.run_until(stop).await?;
            println!("whistle stopped");
        }
        Command::Grid { command } => whistle::grid::run(&endpoints, command).await?,
        Command::Outbox { command } => whistle::outbox::run(command).await?,
        Command::NatsConfig(args) => whistle::nats_config::run(&args)?,
        Command::Credentials { command } => whistle::credentials::run(command).await?,
        Command::Demo { credentials } => {
            // the people's tokens beside the department credentials of that data folder
            let people = whistle::tokens::tokens_path(&credentials.data_dir);
            if cli.identity.as_person.is_none() && people.exists() {
                whistle::client::set_identity(whistle::client::Identity {
                    token: cli.identity.bearer_token.clone(),
                    personas: whistle::tokens::read_tokens(&people)?,
                });
            }
            let tokens = whistle::client::read_credentials(&credentials.path())?;
            whistle::demo::play(&endpoints, tokens).await?;
        }
        Command::Report {
            category,
            grid,
            lat,
            lng,
            address,
            description,
            severity: level,
            reporter,
            request_id,
        } => {
            let mut intake = endpoints.intake().await?;
            let response = intake
                .submit_report(SubmitReportRequest {
                    request_id: request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                    channel: Channel::GridPatrol as i32,
                    reporter_id: reporter,
                    category_code: category,
                    severity: severity(&level)? as i32,
                    description,
                    place: Some(Place {
                        grid_code: grid,
                        lat,
                        lng,
                        address,
                    }),
                    attachments: vec![],
                    observed_at: None,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::submitted(&response, format));
        }
        Command::Case { case_id } => {
            let mut dispatch = endpoints.dispatch().await?;
            let case = dispatch
                .get_case(GetCaseRequest { case_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::case(&case, format));
        }
        Command::Watch { department, after } => {
            let token = department_token(
                &department.department,
                department.token.as_deref(),
                &department.credentials.path(),
            )?;
            let mut gateway = endpoints.gateway().await?;
            let mut notices = gateway
                .subscribe(with_token(
                    SubscribeRequest {
                        after_sequence: after,
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(notice) = notices.next().await {
                let notice = notice.map_err(status_error)?;
                print!("{}", output::notice(&notice, format));
            }
        }
        Command::Ack {
            assignment_id,
            department,
            person,
        } => {
            let token = department_token(
                &department.department,
                department.token.as_deref(),
                &department.credentials.path(),
            )?;
            let request = AcknowledgeRequest {
                assignment_id,
                responsible_person: person,
                ..Default::default()
            };
            let assignment = endpoints
                .gateway()
                .await?
                .acknowledge(with_token(request, &token)?)
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::assignment(&assignment, format));
        }
        Command::CheckIn {
            assignment_id,
            department,
            lat,
            lng,
            datum,
        } => {
            let token = department_token(
                &department.department,
                department.token.as_deref(),
                &department.credentials.path(),
            )?;
            let request = CheckInRequest {
                assignment_id,
                lat,
                lng,
                datum: whistle::grid::datum(&datum)? as i32,
                ..Default::default()
            };
            let assignment = endpoints
                .gateway()
                .await?
                .check_in(with_token(request, &token)?)
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::assignment(&assignment, format));
        }
        Command::Resolve {
            assignment_id,
            department,
            resolution,
        } => {
            let token = department_token(
                &department.department,
                department.token.as_deref(),
                &department.credentials.path(),
            )?;
            let request = ResolveRequest {
                assignment_id,
                resolution,
                ..Default::default()
            };
            let assignment = endpoints
                .gateway()
                .await?
                .resolve(with_token(request, &token)?)
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::assignment(&assignment, format));
        }
        Command::Verify {
            case_id,
            failed,
            note,
            verifier,
        } => {
            let mut dispatch = endpoints.dispatch().await?;
            let case = dispatch
                .verify_case(VerifyCaseRequest {
                    case_id,
                    verifier_id: verifier,
                    passed: !failed,
                    note,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::case(&case, format));
        }
        Command::Evaluation { command } => whistle::evaluation::run(&endpoints, command).await?,
        Command::Scorecard {
            department,
            department_option,
            period,
            format: export_format,
            region,
        } => {
            let period = period.unwrap_or_else(|| {
                (chrono::Utc::now() + chrono::Duration::hours(8))
                    .format("%Y-%m")
                    .to_string()
            });
            let department = department.or(department_option);
            if let Some(export_format) = export_format {
                let export_format = whistle::evaluation::ExportFormat::parse(&export_format)?;
                let text = whistle::evaluation::export_period(
                    &endpoints,
                    &period,
                    department.as_deref(),
                    export_format,
                )
                .await?;
                print!("{text}");
                return Ok(());
            }
            let Some(department) = department else {
                anyhow::bail!(
                    "name a department, or export every department with --format csv|json"
                );
            };
            let mut evaluation = endpoints.evaluation().await?;
            let scorecard = evaluation
                .get_scorecard(GetScorecardRequest {
                    department_code: department,
                    period,
                    region_code: region,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", output::scorecard(&scorecard, format));
        }
        Command::Bench(arguments) => run_bench(arguments, None).await?,
    }
    Ok(())
}
