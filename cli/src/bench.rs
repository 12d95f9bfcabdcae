//! `whistle bench`: the whole lifecycle of a case, measured from outside the way a deployment runs:
//! the four service binaries as separate processes with a database each and a private
//! `nats-server`; simulated department systems and a community driving every case to its
//! scorecard; and, in the same run, this machine's raw limits (JetStream, insert transactions), so
//! every figure comes with a ratio that survives a change of machine. See docs/benchmarks.md.

mod load;
pub mod preload;
mod processes;
mod raw;
mod stats;

pub use load::{LoadResult, LoadShape, Roles};
pub use preload::PreloadResult;
pub use processes::{CpuAccount, ProcessUsage, Storage};
pub use raw::RawLimits;

use processes::ProcessPlatform;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Cases through the whole lifecycle.
    pub cases: usize,
    /// Arrivals per second (open loop); `None`: as fast as `in_flight` open cases allow.
    pub rate: Option<f64>,
    /// Cases open at a time without `rate`.
    pub in_flight: usize,
    /// PostgreSQL admin URL: a fresh database per service on that server; SQLite files otherwise.
    pub postgres: Option<String>,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
    /// Cases stored before the measured run.
    pub preload: usize,
    /// Folder of the `whistle-<service>` binaries (default: next to this executable).
    pub bin_dir: Option<PathBuf>,
    /// Bearer tokens of the reporter, community and observer roles (departments use the gateway's).
    pub reporter_token: Option<String>,
    pub community_token: Option<String>,
    pub observer_token: Option<String>,
    /// Give up when no case progressed for this long.
    pub stall: Duration,
    /// Niceness of intake, the gateway and evaluation (dispatch stays at 0); 0: equal priority.
    pub others_nice: u8,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            cases: 2000,
            rate: None,
            in_flight: 64,
            postgres: None,
            json: None,
            preload: 0,
            bin_dir: None,
            reporter_token: None,
            community_token: None,
            observer_token: None,
            stall: Duration::from_secs(60),
            others_nice: 0,
        }
    }
}

/// Everything one run measured; also the JSON report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub storage: String,
    pub mode: String,
    pub cases: usize,
    pub completed: usize,
    pub rate: Option<f64>,
    pub in_flight: Option<usize>,
    pub preload: usize,
    /// Niceness intake, the gateway and evaluation ran at (dispatch at 0); 0: equal priority.
    pub others_nice: u8,
    /// How long storing the `preload` cases took (before the services started).
    pub preload_seconds: f64,
    /// Per service, rows in its main tables after the preload.
    pub preload_rows: BTreeMap<String, BTreeMap<String, u64>>,
    /// Cases through the whole lifecycle (counted on the scorecard) per second.
    pub cases_per_second: f64,
    pub report_to_notice_ms: stats::Percentiles,
    pub load: LoadResult,
    /// CPU seconds spent during the measured run, and peak RSS, per process.
    pub processes: BTreeMap<String, ProcessUsage>,
    /// Where the machine's CPU went during the measured run, in cores.
    pub cpu: CpuAccount,
    pub raw: RawLimits,
    /// Messages NATS delivered to each durable consumer of the platform's streams during the
    /// measured run, per case counted (redeliveries included). From NATS 2.10 a consumer is given
    /// only what its service applies (docs/design-notes.md).
    pub nats_deliveries_per_case: BTreeMap<String, f64>,
    /// Each raw figure divided by `cases_per_second`.
    pub ratios_raw_to_pipeline: BTreeMap<String, f64>,
    pub machine: BTreeMap<String, String>,
}

/// Runs the benchmark, prints a Markdown report and writes the JSON one.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let bin_dir = processes::binary_folder(options.bin_dir.as_deref())?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let folder = std::env::temp_dir().join(format!("whistle-bench-{run}"));
    let storage = match &options.postgres {
        Some(admin_url) => Storage::Postgres {
            admin_url: admin_url.clone(),
        },
        None => Storage::Sqlite,
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut platform = ProcessPlatform::start(
        &folder,
        &bin_dir,
        &storage,
        &run,
        options.preload,
        options.others_nice,
    )
    .await?;
    let result = measure(&platform, &options, &storage, &run).await;
    let usage_end = platform.usage();
    platform.stop().await;
    let mut report = match result {
        Ok(report) => {
            let _ = std::fs::remove_dir_all(&folder);
            report
        }
        Err(error) => {
            return Err(error.context(format!("the services' logs are in {}", folder.display())));
        }
    };
    for (name, usage) in usage_end {
        let entry = report.processes.entry(name).or_default();
        entry.peak_rss_mib = usage.peak_rss_mib;
        entry.rss_mib = usage.rss_mib;
        entry.rss_anon_mib = usage.rss_anon_mib;
        entry.rss_file_mib = usage.rss_file_mib;
        entry.nice = usage.nice;
    }
    report.machine.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
            .to_string(),
    );
    report.machine.insert(
        "load_average_at_start".into(),
        load_before.trim().to_string(),
    );
    // consumers take several filter subjects from 2.10 on (docs/design-notes.md)
    if let Some(version) = whistle_platform::local_nats::LocalNatsServer::find_binary()
        .ok()
        .and_then(|binary| whistle_platform::local_nats::LocalNatsServer::version_of(&binary))
    {
        report.machine.insert("nats_server".into(), version);
    }
    print!("{}", markdown(&report));
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
        println!("\nJSON report: {}", path.display());
    }
    Ok(report)
}

async fn measure(
    platform: &ProcessPlatform,
    options: &BenchOptions,
    storage: &Storage,
    run: &str,
) -> anyhow::Result<BenchReport> {
    let departments = read_credentials(&platform.credentials_file).await?;
    let endpoints = crate::client::Endpoints {
        intake: platform.url("intake"),
        dispatch: platform.url("dispatch"),
        gateway: platform.url("department-gateway"),
        evaluation: platform.url("evaluation"),
    };
    let channel = |url: String| async move {
        anyhow::Ok(
            tonic::transport::Endpoint::from_shared(url)?
                .tcp_nodelay(true)
                .connect()
                .await?,
        )
    };
    let clients = load::Clients {
        intake: IntakeServiceClient::new(channel(endpoints.intake.clone()).await?),
        dispatch: DispatchServiceClient::new(channel(endpoints.dispatch.clone()).await?),
        gateway: DepartmentGatewayClient::new(channel(endpoints.gateway.clone()).await?),
        evaluation: EvaluationServiceClient::new(channel(endpoints.evaluation.clone()).await?),
    };
    // the people of `whistle up`, unless the caller names other tokens: the grid worker
    // reports, 中岳社区 (where the bench's reports lie) verifies, 张湾区's supervision reads the
    // lead's card
    let person = |name: &str| platform.auth.tokens.get(name).cloned();
    let roles = Roles {
        departments,
        reporter: options
            .reporter_token
            .clone()
            .or_else(|| person("reporter")),
        community: options
            .community_token
            .clone()
            .or_else(|| person("community:420303003001")),
        observer: options
            .observer_token
            .clone()
            .or_else(|| person("supervisor")),
        // the department systems of the history had received every preloaded notice
        after_sequence: platform
            .preload
            .as_ref()
            .map(|preload| preload.after_sequence.clone())
            .unwrap_or_default(),
    };
    let simulation = load::Load::start(clients, roles, platform.connect_nats().await?).await?;
    // one case through the whole lifecycle first: connections, streams and consumers are warm
    let warm_up = simulation
        .phase(
            "warm-up",
            LoadShape {
                cases: 1,
                rate: None,
                in_flight: 1,
            },
            options.stall,
        )
        .await?;
    if warm_up.completed != 1 {
        simulation.stop();
        anyhow::bail!(
            "the warm-up case did not complete its lifecycle within {:?} (errors: {:?})",
            options.stall,
            warm_up.errors
        );
    }
    let nats = platform.connect_nats().await?;
    let deliveries_before = consumer_deliveries(&nats).await?;
    let usage_before = platform.usage();
    let cpu_before = processes::CpuSample::now();
    let shape = LoadShape {
        cases: options.cases,
        rate: options.rate,
        in_flight: options.in_flight,
    };
    let measured = simulation.phase("measured", shape, options.stall).await;
    let usage_after = platform.usage();
    let cpu_after = processes::CpuSample::now();
    let deliveries_after = consumer_deliveries(&nats).await?;
    simulation.stop();
    let measured = measured?;
    let nats_deliveries_per_case = deliveries_after
        .iter()
        .map(|(consumer, after)| {
            let delivered = after - deliveries_before.get(consumer).copied().unwrap_or(0);
            (
                consumer.clone(),
                delivered as f64 / measured.completed.max(1) as f64,
            )
        })
        .collect();

    let mut raw = RawLimits::default();
    let sizes = if options.cases < 100 {
        raw::RawSizes {
            sync_publishes: 200,
            async_publishes: 2_000,
            single_row_transactions: 50,
            hundred_row_transactions: 5,
        }
    } else {
        raw::RawSizes {
            sync_publishes: 2_000,
            async_publishes: 50_000,
            single_row_transactions: 1_000,
            hundred_row_transactions: 50,
        }
    };
    raw::jetstream(platform.connect_nats().await?, sizes, &mut raw).await?;
    match storage {
        Storage::Sqlite => {
            let url = format!("sqlite://{}", platform.folder.join("raw.sqlite").display());
            raw::database(&url, sizes, &mut raw).await?;
        }
        Storage::Postgres { admin_url } => {
            let name = processes::database_name(run, "raw");
            let url = processes::create_postgres_database(admin_url, &name).await?;
            let result = raw::database(&url, sizes, &mut raw).await;
            processes::drop_postgres_databases(admin_url, &[name]).await;
            result?;
        }
    }

    let cases_per_second = measured
        .stages_cases_per_second
        .get("6 counted on the scorecard")
        .copied()
        .unwrap_or(0.0);
    let mut ratios = BTreeMap::new();
    for (name, value) in [
        (
            "jetstream_publish_sync",
            raw.jetstream_publish_sync_per_second,
        ),
        (
            "jetstream_publish_async",
            raw.jetstream_publish_async_per_second,
        ),
        (
            "jetstream_consume_acked",
            raw.jetstream_consume_acked_per_second,
        ),
        (
            "insert_1_row_transactions",
            raw.insert_1_row_transactions_per_second,
        ),
        (
            "insert_100_row_transactions",
            raw.insert_100_row_transactions_per_second,
        ),
        (
            "insert_100_row_transactions_rows",
            raw.insert_100_row_transactions_rows_per_second,
        ),
    ] {
        ratios.insert(
            name.to_string(),
            if cases_per_second > 0.0 {
                value / cases_per_second
            } else {
                0.0
            },
        );
    }
    let mut processes = BTreeMap::new();
    for (name, after) in usage_after {
        let before = usage_before.get(&name).copied().unwrap_or_default();
        processes.insert(
            name,
            ProcessUsage {
                cpu_seconds: after.cpu_seconds - before.cpu_seconds,
                storage_write_mib: after.storage_write_mib - before.storage_write_mib,
                ..after
            },
        );
    }
    let services_cpu: f64 = processes
        .iter()
        .filter(|(name, _)| name.as_str() != "nats-server")
        .map(|(_, usage)| usage.cpu_seconds)
        .sum();
    let nats_cpu = processes
        .get("nats-server")
        .map(|usage| usage.cpu_seconds)
        .unwrap_or(0.0);
    let cpu = cpu_before.account(&cpu_after, services_cpu, nats_cpu);
    Ok(BenchReport {
        storage: match storage {
            Storage::Sqlite => "sqlite".into(),
            Storage::Postgres { .. } => "postgresql".into(),
        },
        mode: match options.rate {
            Some(rate) => format!("open loop, {rate} arrivals/s"),
            None => format!("closed loop, {} cases open at a time", options.in_flight),
        },
        cases: options.cases,
        completed: measured.completed,
        rate: options.rate,
        in_flight: options.rate.is_none().then_some(options.in_flight),
        preload: options.preload,
        others_nice: options.others_nice,
        preload_seconds: platform
            .preload
            .as_ref()
            .map(|preload| preload.seconds)
            .unwrap_or(0.0),
        preload_rows: platform
            .preload
            .as_ref()
            .map(|preload| preload.rows.clone())
            .unwrap_or_default(),
        cases_per_second,
        report_to_notice_ms: measured.report_to_notice_ms,
        load: measured,
        processes,
        cpu,
        raw,
        nats_deliveries_per_case,
        ratios_raw_to_pipeline: ratios,
        machine: BTreeMap::new(),
    })
}

async fn read_credentials(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(tokens) = serde_json::from_str::<BTreeMap<String, String>>(&text)
            && !tokens.is_empty()
        {
            return Ok(tokens);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the gateway did not write {} within 30 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentiles_row(name: &str, value: &stats::Percentiles) -> String {
    format!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
        value.p50, value.p90, value.p99, value.max, value.count
    )
}

/// The human-readable report (Markdown, ready for docs/benchmarks.md).
pub fn markdown(report: &BenchReport) -> String {
    let mut out = String::new();
    let load = &report.load;
    out.push_str(&format!(
        "## whistle bench: {} ({}), {} cases{}{}\n\n",
        report.storage,
        report.mode,
        report.cases,
        if report.preload > 0 {
            format!(", {} preloaded", report.preload)
        } else {
            String::new()
        },
        if report.others_nice > 0 {
            format!(
                ", intake, gateway and evaluation at niceness {}",
                report.others_nice
            )
        } else {
            String::new()
        }
    ));
    if report.preload > 0 {
        out.push_str(&format!(
            "preload: {} finished cases stored in {:.1} s ({:.0} cases/s) before the services started\n\n",
            report.preload,
            report.preload_seconds,
            report.preload as f64 / report.preload_seconds.max(0.001)
        ));
    }
    out.push_str(&format!(
        "machine: {} cores, load average at start {}, nats-server {}\n\n",
        report.machine.get("cores").cloned().unwrap_or_default(),
        report
            .machine
            .get("load_average_at_start")
            .cloned()
            .unwrap_or_default(),
        report
            .machine
            .get("nats_server")
            .map_or("(version unknown)", String::as_str)
    ));
    out.push_str(&format!(
        "**{:.1} cases/s through the whole lifecycle**: {} of {} cases counted on the scorecard in {:.1} s\n\n",
        report.cases_per_second, report.completed, report.cases, load.elapsed_seconds
    ));
    out.push_str("| stage | cases | cases/s |\n|---|---|---|\n");
    for (stage, rate) in &load.stages_cases_per_second {
        out.push_str(&format!(
            "| {stage} | {} | {rate:.1} |\n",
            load.stages_count.get(stage).copied().unwrap_or(0)
        ));
    }
    out.push_str("\n| latency, ms | p50 | p90 | p99 | max | n |\n|---|---|---|---|---|---|\n");
    out.push_str(&percentiles_row("SubmitReport", &load.submit_report_ms));
    out.push_str(&percentiles_row(
        "report → first Notice",
        &load.report_to_notice_ms,
    ));
    out.push_str(&percentiles_row(
        "report answered → first Notice",
        &load.report_answered_to_notice_ms,
    ));
    let legs = &load.notice_legs_ms;
    out.push_str(&percentiles_row(
        "… report → whistle.issued made (intake, dispatch)",
        &legs.report_to_whistle_event,
    ));
    out.push_str(&percentiles_row(
        "… → Notice sent (dispatch's relay, gateway)",
        &legs.whistle_event_to_sent,
    ));
    out.push_str(&percentiles_row(
        "… → Notice received (the stream)",
        &legs.sent_to_received,
    ));
    out.push_str(&percentiles_row(
        "Acknowledge → its event on NATS",
        &load.acknowledge_to_event_ms,
    ));
    out.push_str(&percentiles_row(
        "report → counted on the scorecard",
        &load.report_to_scorecard_ms,
    ));
    if report.rate.is_some() {
        out.push_str(&percentiles_row(
            "arrival sent behind schedule",
            &load.arrival_lag_ms,
        ));
    }
    if !load.slowest_notices.is_empty() {
        out.push_str(
            "\n| slowest report → first Notice, ms | sent, s after the start | sent at | legs, ms: → whistle.issued / → sent / → received |\n|---|---|---|---|\n",
        );
        for slow in &load.slowest_notices {
            let legs: Vec<String> = slow.legs_ms.iter().map(|leg| format!("{leg:.1}")).collect();
            out.push_str(&format!(
                "| {:.1} | {:.1} | {} | {} |\n",
                slow.ms,
                slow.sent_after_s,
                slow.sent_at,
                legs.join(" / ")
            ));
        }
    }
    out.push_str(
        "\n| process | CPU s (measured run) | CPU s per 1000 cases | storage writes KiB per case | peak RSS MiB | RSS at the end MiB: anonymous / file (code) |\n|---|---|---|---|---|---|\n",
    );
    let per_case = |total: f64| {
        if report.completed > 0 {
            total / report.completed as f64
        } else {
            0.0
        }
    };
    for (name, usage) in &report.processes {
        out.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} / {:.1} |\n",
            usage.cpu_seconds,
            per_case(usage.cpu_seconds * 1000.0),
            per_case(usage.storage_write_mib * 1024.0),
            usage.peak_rss_mib,
            usage.rss_anon_mib,
            usage.rss_file_mib
        ));
    }
    let cpu = &report.cpu;
    out.push_str(&format!(
        "\nCPU over the measured run ({:.1} s), in cores: the machine {:.2} of {} busy ({:.2} in the kernel; {:.2} more idle waiting for the disk) — the services {:.2}, NATS {:.2}, PostgreSQL {:.2}, this bench's clients {:.2}, the rest {:.2}\n",
        cpu.seconds,
        cpu.machine_busy_cores,
        cpu.cores,
        cpu.machine_kernel_cores,
        cpu.machine_iowait_cores,
        cpu.services_cores,
        cpu.nats_cores,
        cpu.postgres_cores,
        cpu.bench_cores,
        cpu.other_cores
    ));
    if !report.nats_deliveries_per_case.is_empty() {
        let each: Vec<String> = report
            .nats_deliveries_per_case
            .iter()
            .map(|(consumer, per_case)| format!("{consumer} {per_case:.1}"))
            .collect();
        out.push_str(&format!(
            "
NATS deliveries per case: {:.1} ({})\n",
            report.nats_deliveries_per_case.values().sum::<f64>(),
            each.join(", ")
        ));
    }
    let raw = &report.raw;
    out.push_str(
        "\n| raw limit (same run) | per second | ratio to pipeline cases/s |\n|---|---|---|\n",
    );
    for (name, value, ratio) in [
        (
            "JetStream publish, sync (512 B)",
            raw.jetstream_publish_sync_per_second,
            "jetstream_publish_sync",
        ),
        (
            "JetStream publish, async, 256 in flight",
            raw.jetstream_publish_async_per_second,
            "jetstream_publish_async",
        ),
        (
            "JetStream pull consume with acks",
            raw.jetstream_consume_acked_per_second,
            "jetstream_consume_acked",
        ),
        (
            "insert transaction, 1 row",
            raw.insert_1_row_transactions_per_second,
            "insert_1_row_transactions",
        ),
        (
            "insert transaction, 100 rows (transactions)",
            raw.insert_100_row_transactions_per_second,
            "insert_100_row_transactions",
        ),
        (
            "insert transaction, 100 rows (rows)",
            raw.insert_100_row_transactions_rows_per_second,
            "insert_100_row_transactions_rows",
        ),
    ] {
        out.push_str(&format!(
            "| {name} | {value:.0} | {:.1}× |\n",
            report
                .ratios_raw_to_pipeline
                .get(ratio)
                .copied()
                .unwrap_or(0.0)
        ));
    }
    out.push_str("\nerrors: ");
    if load.errors.is_empty() {
        out.push_str("none\n");
    } else {
        let errors: Vec<String> = load
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} ×{count}"))
            .collect();
        out.push_str(&errors.join(", "));
        out.push('\n');
    }
    out
}

/// Messages delivered so far to each durable consumer of the platform's three streams
/// (`delivered.consumer_sequence`: every delivery, redeliveries included).
async fn consumer_deliveries(client: &async_nats::Client) -> anyhow::Result<BTreeMap<String, u64>> {
    use futures::TryStreamExt;
    let jetstream = async_nats::jetstream::new(client.clone());
    let mut deliveries = BTreeMap::new();
    for stream in [
        whistle_platform::nats::CASES_STREAM,
        whistle_platform::nats::WHISTLES_STREAM,
        whistle_platform::nats::EVALUATION_STREAM,
    ] {
        let mut consumers = jetstream.get_stream(stream).await?.consumers();
        while let Some(info) = consumers.try_next().await? {
            deliveries.insert(info.name.clone(), info.delivered.consumer_sequence);
        }
    }
    Ok(deliveries)
}
