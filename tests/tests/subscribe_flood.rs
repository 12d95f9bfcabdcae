//! One department token floods the real gateway binary with 10,000 `Subscribe` calls. The gateway
//! keeps at most `subscriptions.max_per_department` (8) open, refuses the rest with
//! RESOURCE_EXHAUSTED, stays small and responsive for other departments, idles without burning CPU
//! while subscriptions wait, and frees every slot when the streams close.
//!
//! Measured on the 2-core development machine (debug build, SQLite; `cargo test -p whistle-e2e
//! --test subscribe_flood -- --nocapture` prints them): RSS baseline ≈ 31 MB, peak during the
//! flood ≈ 33 MB, after ≈ 33 MB; another department's ListAssignments median ≈ 19 ms, slowest
//! ≈ 50 ms; 10–30 ms of CPU in 2 s with 8 idle subscriptions; the flood takes ≈ 2 s. The bounds
//! below leave a wide margin over that for a loaded machine, and are far below what the same
//! flood did before subscriptions were bounded (18 MB → 529 MB, other calls 2.3 s, a core busy
//! while idle).

use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;
use whistle_e2e::{Platform, Storage, wait_serving, with_token};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{ListAssignmentsRequest, Notice, SubscribeRequest};

const ATTEMPTS: usize = 10_000;
const LIMIT: usize = 8;
/// Client connections the flood is spread over, and calls in flight on each.
const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 50;
/// How much RSS may grow over the baseline during the flood.
const FLOOD_RSS_GROWTH_KIB: u64 = 32 * 1024;
/// How close to the baseline RSS must come back once the flood is over.
const AFTER_RSS_SLACK_KIB: u64 = 16 * 1024;
/// Another department's calls during the flood carry this deadline and must all be answered within
/// it: a functional bound (not starved; before the limit they took up to 2.3 s) rather than a
/// latency target, which would flake on a loaded CI machine. The latencies are printed.
const OTHER_CALLER_DEADLINE: Duration = Duration::from_secs(5);
/// CPU the gateway may use while 8 subscriptions wait for nothing, over the idle window.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
const IDLE_CPU_MAX: Duration = Duration::from_millis(300);

/// VmRSS of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// User plus system CPU time of a process (`/proc/<pid>/stat`, in USER_HZ = 100 ticks a second).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // fields after the command name, which is in parentheses and may hold spaces
    let after_name = stat.rsplit_once(')').expect("stat").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

async fn connect(url: &str) -> DepartmentGatewayClient<Channel> {
    DepartmentGatewayClient::connect(url.to_string())
        .await
        .expect("connect")
}

async fn subscribe(
    client: &mut DepartmentGatewayClient<Channel>,
    token: &str,
) -> Result<tonic::Streaming<Notice>, tonic::Status> {
    client
        .subscribe(with_token(SubscribeRequest { after_sequence: 0 }, token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_flood_is_bounded_and_leaves_nothing_behind() {
    let mut platform = Platform::prepare(Storage::Sqlite).await;
    platform.gateway.set_env(
        "WHISTLE_DEPARTMENT_GATEWAY__SUBSCRIPTIONS__MAX_PER_DEPARTMENT",
        LIMIT.to_string(),
    );
    // this test is about subscription slots: the per-caller rate (2,000/s, burst 4,000) would
    // answer part of a fast flood of 10,000 first, so it is raised above the flood here
    platform.gateway.set_env(
        "WHISTLE_DEPARTMENT_GATEWAY__GRPC__RATE_BURST",
        (2 * ATTEMPTS).to_string(),
    );
    platform.gateway.start();
    wait_serving(&platform.gateway).await;
    let pid = platform.gateway.pid().expect("gateway runs");
    let tokens = platform.credentials().await;
    let flooder = tokens["zw-sanitation"].clone();
    let other = tokens["zw-housing"].clone();
    let url = platform.gateway.url();

    // warm up the paths the flood takes, then take the baseline
    let mut warm = connect(&url).await;
    for _ in 0..20 {
        warm.list_assignments(with_token(ListAssignmentsRequest::default(), &other))
            .await
            .expect("list");
    }
    drop(subscribe(&mut warm, &flooder).await.expect("subscribe"));
    let baseline_kib = resident_kib(pid);

    // the department's own 8 subscriptions, held through the flood
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        held.push(
            subscribe(&mut warm, &flooder)
                .await
                .expect("within the limit"),
        );
    }

    // idle: 8 open subscriptions waiting for notices cost (almost) no CPU
    let cpu_before = cpu_time(pid);
    let idle_started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await; // a measuring window, not a wait for something
    let idle_cpu = cpu_time(pid).saturating_sub(cpu_before);
    let idle_elapsed = idle_started.elapsed();

    // sample RSS and time another department's calls while the flood runs
    let flooding = Arc::new(AtomicBool::new(true));
    let peak_kib = Arc::new(AtomicU64::new(baseline_kib));
    let sampler = {
        let (flooding, peak_kib) = (flooding.clone(), peak_kib.clone());
        tokio::spawn(async move {
            while flooding.load(Ordering::Relaxed) {
                peak_kib.fetch_max(resident_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let other_caller = {
        let flooding = flooding.clone();
        let mut client = connect(&url).await;
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut request = with_token(ListAssignmentsRequest::default(), &other);
                request.set_timeout(OTHER_CALLER_DEADLINE);
                client
                    .list_assignments(request)
                    .await
                    .expect("another department is served within its deadline during the flood");
                latencies.push(started.elapsed());
            }
            latencies
        })
    };

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connect(&url).await);
    }
    let flood_started = Instant::now();
    let answers: Vec<Result<tonic::Streaming<Notice>, tonic::Status>> =
        futures::stream::iter(0..ATTEMPTS)
            .map(|attempt| {
                let mut client = clients[attempt % CONNECTIONS].clone();
                let token = flooder.clone();
                async move { subscribe(&mut client, &token).await }
            })
            .buffer_unordered(CONNECTIONS * IN_FLIGHT_PER_CONNECTION)
            .collect()
            .await;
    let flood_time = flood_started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let mut latencies = other_caller.await.expect("other caller");
    let peak_kib = peak_kib.load(Ordering::Relaxed);

    let mut opened = 0;
    for answer in &answers {
        match answer {
            Ok(_) => opened += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(
                    status.message(),
                    "too many subscriptions: department zw-sanitation has 8 open, at most 8 \
                     (subscriptions.max_per_department); close one before opening another"
                );
            }
        }
    }
    assert_eq!(opened, 0, "8 were held, so no more may open");
    drop(answers);

    // the held ones close: their slots come back, and the limit still holds
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reopened = Vec::new();
    while reopened.len() < LIMIT {
        match subscribe(&mut warm, &flooder).await {
            Ok(stream) => reopened.push(stream),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "slots not freed: {} of {LIMIT} reopened",
                    reopened.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let ninth = subscribe(&mut warm, &flooder)
        .await
        .expect_err("still bounded after the flood");
    assert_eq!(ninth.code(), Code::ResourceExhausted);
    drop(reopened);
    drop((clients, warm));

    // RSS comes back near the baseline once everything is closed
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_kib = loop {
        let now_kib = resident_kib(pid);
        if now_kib <= baseline_kib + AFTER_RSS_SLACK_KIB || Instant::now() >= deadline {
            break now_kib;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    latencies.sort();
    let slowest = latencies.last().copied().unwrap_or_default();
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "flood: {ATTEMPTS} subscribes in {flood_time:?}; RSS baseline {baseline_kib} KiB, peak {peak_kib} KiB, after {after_kib} KiB; \
         other department: {} ListAssignments, median {median:?}, slowest {slowest:?}; idle CPU {idle_cpu:?} in {idle_elapsed:?} with {LIMIT} open",
        latencies.len()
    );
    assert!(
        idle_cpu <= IDLE_CPU_MAX,
        "idle subscriptions used {idle_cpu:?} of CPU in {idle_elapsed:?}"
    );
    assert!(
        peak_kib <= baseline_kib + FLOOD_RSS_GROWTH_KIB,
        "RSS grew from {baseline_kib} KiB to {peak_kib} KiB during the flood"
    );
    assert!(
        after_kib <= baseline_kib + AFTER_RSS_SLACK_KIB,
        "RSS stayed at {after_kib} KiB after the flood (baseline {baseline_kib} KiB)"
    );
    assert!(!latencies.is_empty(), "the other department got answers");
    platform.shutdown().await;
}
