//! `whistle bench` runs end to end with a handful of cases: the four service binaries as processes,
//! every case driven to its scorecard, and a JSON report with the documented fields. It asserts the
//! structure and that every case completed, never how fast.

use std::path::PathBuf;
use std::process::Command;

fn whistle_binary() -> PathBuf {
    // the service binaries must be there too: `binary` asserts and says how to build them
    let service = whistle_e2e::binary("intake");
    let path = service.with_file_name("whistle");
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

#[test]
fn bench_drives_every_case_to_its_scorecard_and_writes_the_json_report() {
    let folder = tempfile::tempdir().expect("tempdir");
    let json = folder.path().join("bench.json");
    let output = Command::new(whistle_binary())
        .args([
            "bench",
            "--cases",
            "6",
            "--in-flight",
            "3",
            "--stall-secs",
            "60",
            // the other services below dispatch's priority, as docs/operations.md recommends
            "--others-nice",
            "5",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run whistle bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "whistle bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("cases/s through the whole lifecycle"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("json report");
    assert_eq!(report["cases"], 6);
    assert_eq!(
        report["completed"], 6,
        "every case counted on the scorecard: {report:#}"
    );
    assert_eq!(report["storage"], "sqlite");
    assert_eq!(report["others_nice"], 5);
    assert!(
        report["cases_per_second"]
            .as_f64()
            .expect("cases_per_second")
            > 0.0
    );
    for percentile in ["p50", "p90", "p99", "max"] {
        assert!(
            report["report_to_notice_ms"][percentile].is_number(),
            "report_to_notice_ms.{percentile}: {report:#}"
        );
    }
    let load = &report["load"];
    // every stage saw every case; the latencies cover every case (three assignments each)
    for (stage, count) in load["stages_count"].as_object().expect("stages") {
        assert_eq!(count, 6, "stage {stage}: {report:#}");
    }
    assert_eq!(load["report_to_notice_ms"]["count"], 6);
    assert_eq!(load["report_to_scorecard_ms"]["count"], 6);
    assert_eq!(load["submit_report_ms"]["count"], 6);
    assert_eq!(load["acknowledge_to_event_ms"]["count"], 18);
    assert_eq!(load["errors"], serde_json::json!({}), "{report:#}");
    // the six cases, slowest first; the slowest is the maximum, each with its three legs
    let slowest: Vec<f64> = load["slowest_notices"]
        .as_array()
        .expect("slowest_notices")
        .iter()
        .map(|slow| {
            assert_eq!(slow["legs_ms"].as_array().map(Vec::len), Some(3), "{slow}");
            slow["ms"].as_f64().expect("ms")
        })
        .collect();
    assert_eq!(slowest.len(), 6, "{report:#}");
    assert!(slowest.is_sorted_by(|a, b| a >= b), "{slowest:?}");
    assert!(
        (slowest[0] - load["report_to_notice_ms"]["max"].as_f64().expect("max")).abs() < 0.01,
        "{report:#}"
    );
    for process in [
        "intake",
        "dispatch",
        "department-gateway",
        "evaluation",
        "nats-server",
    ] {
        let usage = &report["processes"][process];
        assert!(
            usage["peak_rss_mib"].as_f64().expect("peak rss") > 0.0,
            "{process}: {report:#}"
        );
        // `--others-nice 5`: every service but dispatch ran below its priority
        let nice = match process {
            "dispatch" | "nats-server" => 0,
            _ => 5,
        };
        assert_eq!(usage["nice"], nice, "{process}: {report:#}");
        assert!(usage["cpu_seconds"].is_number(), "{process}: {report:#}");
        // every service commits to its SQLite file during the run
        let written = usage["storage_write_mib"].as_f64().expect("storage writes");
        assert!(
            process == "nats-server" || written > 0.0,
            "{process} wrote nothing: {report:#}"
        );
        let anon = usage["rss_anon_mib"].as_f64().expect("anonymous rss");
        let file = usage["rss_file_mib"].as_f64().expect("file rss");
        let rss = usage["rss_mib"].as_f64().expect("rss");
        assert!(
            anon > 0.0 && file > 0.0 && anon + file <= rss + 0.01,
            "{process}: the parts of the resident set: {report:#}"
        );
    }
    // where the machine's CPU went: the services are part of what the machine spent
    let cpu = &report["cpu"];
    let busy = cpu["machine_busy_cores"].as_f64().expect("machine busy");
    let services = cpu["services_cores"].as_f64().expect("services");
    let nats = cpu["nats_cores"].as_f64().expect("nats");
    assert!(cpu["seconds"].as_f64().expect("seconds") > 0.0, "{cpu:#}");
    assert!(busy > 0.0, "the run used no CPU: {cpu:#}");
    assert!(
        services + nats <= busy + 0.25,
        "more than the machine spent: {cpu:#}"
    );
    for part in ["postgres_cores", "bench_cores", "other_cores"] {
        assert!(cpu[part].as_f64().expect(part) >= 0.0, "{part}: {cpu:#}");
    }
    // the kernel's share is part of the busy time (the services' commits make system calls), the
    // disk waits are not
    let kernel = cpu["machine_kernel_cores"].as_f64().expect("kernel");
    assert!(
        kernel > 0.0 && kernel <= busy + 0.01,
        "the kernel's part of the busy time: {cpu:#}"
    );
    assert!(
        cpu["machine_iowait_cores"].as_f64().expect("iowait") >= 0.0,
        "{cpu:#}"
    );
    for raw in [
        "jetstream_publish_sync_per_second",
        "jetstream_publish_async_per_second",
        "jetstream_consume_acked_per_second",
        "insert_1_row_transactions_per_second",
        "insert_100_row_transactions_per_second",
    ] {
        assert!(
            report["raw"][raw].as_f64().expect("raw figure") > 0.0,
            "{raw}: {report:#}"
        );
    }
    assert_eq!(
        report["ratios_raw_to_pipeline"]
            .as_object()
            .expect("ratios")
            .len(),
        6
    );
}

#[test]
fn bench_with_preloaded_cases_reports_the_preload_and_completes_every_case() {
    let folder = tempfile::tempdir().expect("tempdir");
    let json = folder.path().join("bench-preload.json");
    let output = Command::new(whistle_binary())
        .args([
            "bench",
            "--cases",
            "6",
            "--in-flight",
            "3",
            "--preload",
            "500",
            "--stall-secs",
            "60",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run whistle bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "whistle bench --preload failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("500 preloaded"), "{stdout}");
    assert!(stderr.contains("preload: 500 cases in"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("json report");
    assert_eq!(report["preload"], 500);
    // equal priority unless asked
    assert_eq!(report["others_nice"], 0);
    for process in ["intake", "dispatch", "department-gateway", "evaluation"] {
        assert_eq!(report["processes"][process]["nice"], 0, "{report:#}");
    }
    assert!(
        report["preload_seconds"].as_f64().expect("preload_seconds") > 0.0,
        "{report:#}"
    );
    let rows = &report["preload_rows"];
    assert_eq!(rows["intake"]["intake_cases_closed"], 500, "{report:#}");
    assert_eq!(rows["dispatch"]["dispatch_cases_closed"], 500, "{report:#}");
    assert_eq!(rows["dispatch"]["dispatch_clocks"], 0, "{report:#}");
    assert_eq!(rows["dispatch"]["whistle_outbox_unsent"], 0, "{report:#}");
    assert_eq!(rows["evaluation"]["evaluation_cases"], 500, "{report:#}");
    assert!(
        rows["department-gateway"]["gateway_notices"]
            .as_u64()
            .expect("notices")
            > 0,
        "{report:#}"
    );
    // the measured run on top: every case through its lifecycle, once, without errors
    assert_eq!(report["cases"], 6);
    assert_eq!(
        report["completed"], 6,
        "every case counted on the scorecard: {report:#}"
    );
    for (stage, count) in report["load"]["stages_count"].as_object().expect("stages") {
        assert_eq!(count, 6, "stage {stage}: {report:#}");
    }
    assert_eq!(report["load"]["acknowledge_to_event_ms"]["count"], 18);
    assert_eq!(
        report["load"]["errors"],
        serde_json::json!({}),
        "{report:#}"
    );
}
