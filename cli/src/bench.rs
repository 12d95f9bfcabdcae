//! `whistle bench`: measures the pipeline on this machine against raw JetStream on the same NATS
//! server, so the numbers come with a ratio that survives a change of machine.

use crate::client::{Endpoints, with_token};
use crate::local::{LocalOptions, LocalPlatform};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use whistle_proto::gateway::SubscribeRequest;
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::types::{Channel, Place, Severity};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Reports submitted one at a time for the latency figures.
    pub latency_reports: usize,
    /// Reports submitted concurrently for the throughput figure.
    pub throughput_reports: usize,
    /// Reports in flight during the throughput run.
    pub concurrency: usize,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(index: usize, run: &str) -> SubmitReportRequest {
    // distinct problems about 100 m apart (a 997 × 997 lattice of 0.001°), so none joins another's
    // case; the grid code is given, so the position need not lie in the grid
    let (row, column) = ((index % 997) as f64, ((index / 997) % 997) as f64);
    SubmitReportRequest {
        request_id: format!("bench-{run}-{index}"),
        channel: Channel::GridPatrol as i32,
        reporter_id: "bench".into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: format!("bench report {index}: 垃圾满溢"),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.6369 + row * 0.001,
            lng: 110.7986 + column * 0.001,
            address: "中岳路2号".into(),
        }),
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

/// Runs the benchmark on a fresh local platform in a temporary folder and prints a Markdown report.
pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let folder = std::env::temp_dir().join(format!("whistle-bench-{}", uuid::Uuid::now_v7()));
    let mut platform = LocalPlatform::start(&LocalOptions {
        data_dir: folder.clone(),
        intake_port: 0,
        dispatch_port: 0,
        gateway_port: 0,
        evaluation_port: 0,
        open311_port: 0,
        ..LocalOptions::default()
    })
    .await?;
    platform.wait_ready().await?;
    let endpoints = Endpoints {
        intake: format!("http://{}", platform.intake),
        dispatch: format!("http://{}", platform.dispatch),
        gateway: format!("http://{}", platform.gateway),
        evaluation: format!("http://{}", platform.evaluation),
    };
    let tokens = platform.credentials().await?;
    let token = tokens
        .get("zw-sanitation")
        .ok_or_else(|| anyhow::anyhow!("no token for zw-sanitation"))?
        .clone();
    let nats_url = platform.nats_url.clone();
    let result = measure(&endpoints, &token, &nats_url, &options).await;
    let stop = CancellationToken::new();
    stop.cancel();
    platform.run_until(stop).await?;
    let _ = std::fs::remove_dir_all(&folder);
    result
}

async fn measure(
    endpoints: &Endpoints,
    token: &str,
    nats_url: &str,
    options: &BenchOptions,
) -> anyhow::Result<()> {
    let mut intake = endpoints.intake().await?;
    let mut gateway = endpoints.gateway().await?;
    // wait until the pipeline is up: one warm-up report travels end to end
    let mut notices = gateway
        .subscribe(with_token(SubscribeRequest { after_sequence: 0 }, token)?)
        .await?
        .into_inner();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let warm_up = intake
        .submit_report(report(usize::MAX, &run))
        .await?
        .into_inner();
    wait_for_case(&mut notices, &warm_up.case_id).await?;

    // latency: one report at a time, SubmitReport returning -> Notice arriving at the lead department
    let mut after_response = Vec::with_capacity(options.latency_reports);
    let mut end_to_end = Vec::with_capacity(options.latency_reports);
    for index in 0..options.latency_reports {
        let started = Instant::now();
        let response = intake
            .submit_report(report(index, &run))
            .await?
            .into_inner();
        let returned = Instant::now();
        wait_for_case(&mut notices, &response.case_id).await?;
        let arrived = Instant::now();
        after_response.push(arrived - returned);
        end_to_end.push(arrived - started);
    }
    after_response.sort();
    end_to_end.sort();

    // throughput: many reports in flight, until every lead department notice arrived
    let started = Instant::now();
    let submitted = futures::stream::iter(0..options.throughput_reports)
        .map(|index| {
            let mut intake = intake.clone();
            let request = report(1_000_000 + index, &run);
            async move {
                intake
                    .submit_report(request)
                    .await
                    .map(|response| response.into_inner().case_id)
            }
        })
        .buffer_unordered(options.concurrency)
        .collect::<Vec<_>>()
        .await;
    let intake_elapsed = started.elapsed();
    let mut waiting: std::collections::HashSet<String> = std::collections::HashSet::new();
    for case_id in submitted {
        waiting.insert(case_id?);
    }
    while !waiting.is_empty() {
        let notice = tokio::time::timeout(Duration::from_secs(60), notices.next())
            .await
            .map_err(|_| anyhow::anyhow!("{} notices still missing after 60s", waiting.len()))?
            .ok_or_else(|| anyhow::anyhow!("notice stream ended"))??;
        if notice.kind == "whistle.issued" {
            waiting.remove(&notice.case_id);
        }
    }
    let pipeline_elapsed = started.elapsed();
    let pipeline_rate = options.throughput_reports as f64 / pipeline_elapsed.as_secs_f64();

    let raw = raw_jetstream(nats_url, options).await?;

    println!("## whistle bench\n");
    println!(
        "machine: {} cores; NATS and the four services on this machine, SQLite in a temporary folder\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| measure | value |\n|---|---|");
    println!("| reports (latency run) | {} |", options.latency_reports);
    println!(
        "| SubmitReport returned -> Notice arrived, median | {:.2} ms |",
        millis(percentile(&after_response, 0.5))
    );
    println!(
        "| SubmitReport returned -> Notice arrived, p90 | {:.2} ms |",
        millis(percentile(&after_response, 0.9))
    );
    println!(
        "| SubmitReport returned -> Notice arrived, max | {:.2} ms |",
        millis(percentile(&after_response, 1.0))
    );
    println!(
        "| SubmitReport sent -> Notice arrived, median | {:.2} ms |",
        millis(percentile(&end_to_end, 0.5))
    );
    println!(
        "| raw JetStream publish -> pull consumer receives, median | {:.2} ms |",
        millis(raw.round_trip_median)
    );
    println!(
        "| ratio pipeline median / raw JetStream hop median | {:.1}x |",
        millis(percentile(&after_response, 0.5)) / millis(raw.round_trip_median).max(0.001)
    );
    println!(
        "| throughput: {} reports, {} in flight, report -> lead notice | {:.0} reports/s |",
        options.throughput_reports, options.concurrency, pipeline_rate
    );
    println!(
        "| … intake alone: every SubmitReport answered | {:.0} reports/s |",
        options.throughput_reports as f64 / intake_elapsed.as_secs_f64()
    );
    println!(
        "| raw JetStream async publish (256 acks in flight, 512 B) | {:.0} msg/s |",
        raw.publish_rate
    );
    println!(
        "| ratio raw publish rate / pipeline rate | {:.1}x |",
        raw.publish_rate / pipeline_rate.max(0.001)
    );
    Ok(())
}

async fn wait_for_case(
    notices: &mut tonic::Streaming<whistle_proto::gateway::Notice>,
    case_id: &str,
) -> anyhow::Result<()> {
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
            .await
            .map_err(|_| anyhow::anyhow!("no notice for case {case_id} within 30s"))?
            .ok_or_else(|| anyhow::anyhow!("notice stream ended"))??;
        if notice.case_id == case_id && notice.kind == "whistle.issued" {
            return Ok(());
        }
    }
}

struct RawJetStream {
    round_trip_median: Duration,
    publish_rate: f64,
}

/// The same NATS server without Whistle: one hop of publish -> consume, and bulk async publish.
async fn raw_jetstream(nats_url: &str, options: &BenchOptions) -> anyhow::Result<RawJetStream> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let name = format!("BENCH_{}", uuid::Uuid::now_v7().simple());
    let subject = format!("bench.{name}");
    let bench_stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = bench_stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let payload = bytes::Bytes::from(vec![b'x'; 512]);
    let mut round_trips = Vec::with_capacity(options.latency_reports);
    for index in 0..options.latency_reports {
        let started = Instant::now();
        js.publish(format!("{subject}.hop.{index}"), payload.clone())
            .await?
            .await?;
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("raw consumer got nothing"))?
            .ok_or_else(|| anyhow::anyhow!("raw consumer ended"))?
            .map_err(|error| anyhow::anyhow!(error))?;
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
        round_trips.push(started.elapsed());
    }
    round_trips.sort();
    let count = options.throughput_reports.max(1000) * 10;
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for index in 0..count {
        in_flight.push_back(
            js.publish(format!("{subject}.bulk.{index}"), payload.clone())
                .await?,
        );
        if in_flight.len() >= 256
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    let publish_rate = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(RawJetStream {
        round_trip_median: percentile(&round_trips, 0.5),
        publish_rate,
    })
}
