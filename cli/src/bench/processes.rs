//! The platform as a deployment runs it: the four service binaries as separate processes, each with
//! its own database (SQLite files, or fresh PostgreSQL databases dropped afterwards), and a private
//! `nats-server`; plus what each process spent (CPU seconds, peak RSS) from `/proc`.

use sea_orm::ConnectionTrait;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use whistle_platform::local_nats::{LocalNatsServer, free_port};

/// The four services, by binary name (`whistle-<service>`).
pub const SERVICES: [&str; 4] = ["intake", "dispatch", "department-gateway", "evaluation"];

/// Where the databases live.
#[derive(Debug, Clone)]
pub enum Storage {
    /// One SQLite file per service in the run's folder.
    Sqlite,
    /// A fresh database per service on this server (admin URL), dropped afterwards.
    Postgres { admin_url: String },
}

/// One child process and its log.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within {grace:?} of SIGTERM: killed",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time, peak memory and storage writes of a process, read from `/proc/<pid>/stat`,
/// `/proc/<pid>/status` and `/proc/<pid>/io`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessUsage {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// VmHWM: the peak resident set, MiB.
    pub peak_rss_mib: f64,
    /// VmRSS now, MiB.
    pub rss_mib: f64,
    /// RssAnon now, MiB: heap, stacks, the databases' page caches.
    pub rss_anon_mib: f64,
    /// RssFile now, MiB: mostly the binary's own code, paged in as it runs.
    pub rss_file_mib: f64,
    /// `write_bytes` of `/proc/<pid>/io`, MiB: what the process sent to storage (counted when it
    /// dirtied the pages). For a SQLite service, its write-ahead log and the checkpoints that copy
    /// it into the database; near 0 on PostgreSQL, whose own processes write.
    pub storage_write_mib: f64,
    /// The process's niceness (0 unless `--others-nice` lowered it).
    pub nice: i64,
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(read_clock_ticks_per_second)
}

fn read_clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// What `/proc` says about `pid` now (zeros where it cannot be read, e.g. not Linux).
pub fn usage(pid: u32) -> ProcessUsage {
    let ticks = clock_ticks_per_second();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the command name may hold spaces: fields are counted after its closing parenthesis
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<f64>().ok())
    };
    // utime, stime and nice are the stat's fields 14, 15 and 19 (proc(5)), the name being field 2
    let cpu_seconds = field(11)
        .zip(field(12))
        .map(|(utime, stime)| (utime + stime) / ticks)
        .unwrap_or(0.0);
    let nice = field(16).map_or(0, |nice| nice as i64);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let storage_write_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes:"))
                .and_then(|value| value.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    ProcessUsage {
        cpu_seconds,
        storage_write_mib: storage_write_bytes / (1024.0 * 1024.0),
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
        rss_anon_mib: kib("RssAnon:") / 1024.0,
        rss_file_mib: kib("RssFile:") / 1024.0,
        nice,
    }
}

/// A running platform of separate processes.
#[derive(Debug)]
pub struct ProcessPlatform {
    pub folder: PathBuf,
    pub nats: Process,
    pub nats_url: String,
    /// intake, dispatch, department-gateway, evaluation.
    pub services: Vec<Process>,
    pub addresses: BTreeMap<&'static str, SocketAddr>,
    pub credentials_file: PathBuf,
    /// The key pair and the people's tokens, as `whistle up` makes them: every call is
    /// authenticated, as in a deployment.
    pub auth: crate::tokens::LocalAuth,
    /// The nkey seed of `whistle-admin` on the private server (no anonymous access).
    pub nats_admin_seed_file: PathBuf,
    /// What `--preload` stored before the services started.
    pub preload: Option<super::preload::PreloadResult>,
    postgres: Option<(String, Vec<String>)>,
}

fn env_prefix(service: &str) -> String {
    format!("WHISTLE_{}", service.to_uppercase().replace('-', "_"))
}

/// The folder holding the service binaries: `--bin-dir`, else next to the running executable.
pub fn binary_folder(bin_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let folder = match bin_dir {
        Some(folder) => folder.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow::anyhow!("the whistle executable has no folder"))?,
    };
    for service in SERVICES {
        let binary = folder.join(format!("whistle-{service}"));
        if !binary.is_file() {
            anyhow::bail!(
                "{} is missing: build the service binaries next to whistle first (`cargo build --release --bins`), or point --bin-dir at them",
                binary.display()
            );
        }
    }
    Ok(folder)
}

/// Creates a database on the server of `admin_url` and returns its URL.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = sea_orm::Database::connect(admin_url)
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach PostgreSQL at --postgres: {error}"))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_string())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--postgres must name a database, e.g. postgres://postgres@127.0.0.1:5432/postgres"
            )
        })?;
    Ok(format!("{base}/{name}"))
}

/// Drops the databases made by [`create_postgres_database`].
pub async fn drop_postgres_databases(admin_url: &str, names: &[String]) {
    match sea_orm::Database::connect(admin_url).await {
        Ok(admin) => {
            for name in names {
                if let Err(error) = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                {
                    eprintln!("cannot drop database {name}: {error}");
                }
            }
        }
        Err(error) => eprintln!("cannot drop the bench databases {names:?}: {error}"),
    }
}

impl ProcessPlatform {
    /// Starts NATS and the four services, and waits until each listens; with `preload` > 0, that
    /// many finished cases are stored in the services' databases before the services start.
    pub async fn start(
        folder: &Path,
        bin_dir: &Path,
        storage: &Storage,
        run: &str,
        preload: usize,
        others_nice: u8,
    ) -> anyhow::Result<ProcessPlatform> {
        std::fs::create_dir_all(folder)?;
        // NATS users and bearer tokens exactly as `whistle up` makes them
        let registry = whistle_platform::nats_accounts::Registry::from_catalogue_json(
            crate::local::DEMO_CATALOGUE,
        )?;
        let nats_auth_dir = folder.join("nats-auth");
        std::fs::create_dir_all(&nats_auth_dir)?;
        let nats_config = whistle_platform::nats_accounts::write_local(&nats_auth_dir, &registry)?;
        let seed_of = |user: &str| {
            whistle_platform::nats_accounts::seed_file(&nats_auth_dir.join("nkeys"), user)
        };
        let auth = crate::tokens::prepare_local(folder)?;
        let nats_port = free_port()?;
        let nats_log = folder.join("nats.log");
        let nats_child = Command::new(LocalNatsServer::find_binary()?)
            .arg("-c")
            .arg(&nats_config)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(folder.join("nats"))
            .arg("-l")
            .arg(&nats_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let nats = Process {
            name: "nats-server".into(),
            child: nats_child,
            log: nats_log,
        };
        let nats_url = format!("nats://127.0.0.1:{nats_port}");
        let catalogue = folder.join("demo-catalogue.json");
        std::fs::write(&catalogue, crate::local::DEMO_CATALOGUE)?;
        let credentials_file = folder.join("demo-credentials.json");

        let mut database_urls = BTreeMap::new();
        let mut postgres = None;
        match storage {
            Storage::Sqlite => {
                for service in SERVICES {
                    database_urls.insert(
                        service,
                        format!(
                            "sqlite://{}",
                            folder.join(format!("{service}.sqlite")).display()
                        ),
                    );
                }
            }
            Storage::Postgres { admin_url } => {
                let mut names = Vec::new();
                for service in SERVICES {
                    let name = database_name(run, service);
                    let url = create_postgres_database(admin_url, &name).await?;
                    names.push(name);
                    database_urls.insert(service, url);
                }
                postgres = Some((admin_url.clone(), names));
            }
        }

        let mut platform = ProcessPlatform {
            folder: folder.to_path_buf(),
            nats,
            nats_url: nats_url.clone(),
            services: Vec::new(),
            addresses: BTreeMap::new(),
            credentials_file: credentials_file.clone(),
            nats_admin_seed_file: seed_of("whistle-admin"),
            auth,
            preload: None,
            postgres,
        };
        wait_for_port(nats_port, "nats-server", &mut platform.nats).await?;
        if preload > 0 {
            match super::preload::run(&database_urls, &catalogue, preload).await {
                Ok(result) => platform.preload = Some(result),
                Err(error) => {
                    platform.stop().await;
                    return Err(error.context("--preload failed"));
                }
            }
        }

        for service in SERVICES {
            let port = free_port()?;
            let admin_port = free_port()?;
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
            env.insert(format!("{prefix}__NATS__URL"), nats_url.clone());
            env.insert(
                format!("{prefix}__NATS__NKEY_SEED_FILE"),
                seed_of(service).display().to_string(),
            );
            env.insert(
                format!("{prefix}__AUTH__KEYS_FILE"),
                platform.auth.public_keys_file.display().to_string(),
            );
            env.insert(
                format!("{prefix}__CATALOGUE__FILE"),
                catalogue.display().to_string(),
            );
            if service == "department-gateway" {
                env.insert(
                    format!("{prefix}__DISPATCH__URL"),
                    format!("http://{}", platform.addresses["dispatch"]),
                );
                env.insert(
                    format!("{prefix}__CATALOGUE__CREDENTIALS_FILE"),
                    credentials_file.display().to_string(),
                );
                env.insert(
                    format!("{prefix}__DISPATCH__SERVICE_TOKEN_FILE"),
                    platform.auth.service_token_file.display().to_string(),
                );
            }
            let log = folder.join(format!("{service}.log"));
            let log_file = std::fs::File::create(&log)?;
            let binary = bin_dir.join(format!("whistle-{service}"));
            // every other service at a lower priority than dispatch, when asked (docs/operations.md,
            // "CPU"): through nice(1), so each of their threads inherits it
            let mut command = if others_nice > 0 && service != "dispatch" {
                let mut nice = Command::new("nice");
                nice.arg("-n").arg(others_nice.to_string()).arg(&binary);
                nice
            } else {
                Command::new(&binary)
            };
            let child = command
                .envs(&env)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()?;
            platform.services.push(Process {
                name: service.to_string(),
                child,
                log,
            });
            platform
                .addresses
                .insert(service, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        for (index, service) in SERVICES.iter().enumerate() {
            let port = platform.addresses[service].port();
            if let Err(error) = wait_for_port(port, service, &mut platform.services[index]).await {
                platform.stop().await;
                return Err(error);
            }
        }
        Ok(platform)
    }

    /// A NATS connection as `whistle-admin` (the private server admits no anonymous client).
    pub async fn connect_nats(&self) -> anyhow::Result<async_nats::Client> {
        let seed = std::fs::read_to_string(&self.nats_admin_seed_file)?;
        Ok(
            async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
                .connect(&self.nats_url)
                .await?,
        )
    }

    /// `http://127.0.0.1:<port>` of a service.
    pub fn url(&self, service: &str) -> String {
        format!("http://{}", self.addresses[service])
    }

    /// CPU and memory of every process so far.
    pub fn usage(&self) -> BTreeMap<String, ProcessUsage> {
        let mut usages = BTreeMap::new();
        for process in self.services.iter().chain(std::iter::once(&self.nats)) {
            usages.insert(process.name.clone(), usage(process.pid()));
        }
        usages
    }

    /// The services (they drain), then NATS, then the PostgreSQL databases.
    pub async fn stop(&mut self) {
        for process in self.services.iter_mut().rev() {
            process.stop(Duration::from_secs(30));
        }
        self.nats.stop(Duration::from_secs(10));
        if let Some((admin_url, names)) = self.postgres.take() {
            drop_postgres_databases(&admin_url, &names).await;
        }
    }
}

/// `whistle_bench_<run>_<what>`: short, lowercase, one per run.
pub fn database_name(run: &str, what: &str) -> String {
    format!(
        "whistle_bench_{}_{}",
        &run[run.len().saturating_sub(12)..],
        what.replace('-', "_")
    )
}

async fn wait_for_port(port: u16, name: &str, process: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{name} did not listen within 90 s; its log:\n{}",
                process.log_tail()
            );
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            anyhow::bail!(
                "{name} exited during start-up ({status}); its log:\n{}",
                process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the whole machine's CPU went over the measured run, in cores (CPU seconds ÷ seconds):
/// the services and NATS (as in `processes`), PostgreSQL's own processes, this bench's clients
/// (the simulated departments and street, in this process) and the rest. On a machine whose cores
/// are all busy, the pipeline's rate is what the load's share leaves it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuAccount {
    /// Wall-clock seconds between the two samples.
    pub seconds: f64,
    pub cores: usize,
    /// All cores' non-idle time (`/proc/stat`: everything but idle and iowait).
    pub machine_busy_cores: f64,
    /// Of that, the kernel's part (system, irq, softirq): system calls, the file system, the
    /// network stack, switching threads.
    pub machine_kernel_cores: f64,
    /// Idle time while the CPU had I/O outstanding (iowait): commits and checkpoints waiting for
    /// the disk. Not part of the busy time.
    pub machine_iowait_cores: f64,
    /// The four services together.
    pub services_cores: f64,
    pub nats_cores: f64,
    /// Every process named `postgres` (backends, writer, WAL writer, checkpointer); 0 on SQLite.
    pub postgres_cores: f64,
    /// This `whistle bench` process: the load generator and the simulated clients.
    pub bench_cores: f64,
    /// Busy time none of the above accounts for: the kernel's own threads, other processes.
    pub other_cores: f64,
}

/// CPU seconds so far: the machine's busy time, this process's, and each `postgres` process's.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    at: Option<Instant>,
    machine_busy: f64,
    machine_kernel: f64,
    machine_iowait: f64,
    bench: f64,
    postgres: BTreeMap<u32, f64>,
}

impl CpuSample {
    pub fn now() -> Self {
        let ticks = clock_ticks_per_second();
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice
        let (machine_busy, machine_kernel, machine_iowait) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let fields: Vec<f64> = stat
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .take(8)
                    .filter_map(|field| field.parse().ok())
                    .collect();
                let total: f64 = fields.iter().sum();
                let iowait = *fields.get(4)?;
                let idle = fields.get(3)? + iowait;
                let kernel = fields.get(2)? + fields.get(5)? + fields.get(6)?;
                Some(((total - idle) / ticks, kernel / ticks, iowait / ticks))
            })
            .unwrap_or_default();
        let mut postgres = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let named_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "postgres");
                if named_postgres {
                    postgres.insert(pid, usage(pid).cpu_seconds);
                }
            }
        }
        Self {
            at: Some(Instant::now()),
            machine_busy,
            machine_kernel,
            machine_iowait,
            bench: usage(std::process::id()).cpu_seconds,
            postgres,
        }
    }

    /// The account from `self` (earlier) to `later`, given the services' and NATS's CPU seconds
    /// over the same span.
    pub fn account(&self, later: &CpuSample, services: f64, nats: f64) -> CpuAccount {
        let seconds = match (self.at, later.at) {
            (Some(start), Some(end)) => end.duration_since(start).as_secs_f64(),
            _ => 0.0,
        };
        if seconds <= 0.0 {
            return CpuAccount::default();
        }
        // a backend that started during the run counts from zero; one that ended is not seen
        let postgres: f64 = later
            .postgres
            .iter()
            .map(|(pid, cpu)| cpu - self.postgres.get(pid).copied().unwrap_or(0.0))
            .sum();
        let busy = later.machine_busy - self.machine_busy;
        let bench = later.bench - self.bench;
        CpuAccount {
            seconds,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            machine_busy_cores: busy / seconds,
            machine_kernel_cores: (later.machine_kernel - self.machine_kernel) / seconds,
            machine_iowait_cores: (later.machine_iowait - self.machine_iowait) / seconds,
            services_cores: services / seconds,
            nats_cores: nats / seconds,
            postgres_cores: postgres / seconds,
            bench_cores: bench / seconds,
            other_cores: ((busy - services - nats - postgres - bench) / seconds).max(0.0),
        }
    }
}
