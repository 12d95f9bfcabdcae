//! Measures `whistle evaluation rebuild` on a generated history: starts a private nats-server,
//! publishes the history of N cases (default 100,000; shuffled, 5% redelivered), then rebuilds an
//! empty SQLite database (or `--into <database url>`) from it and prints the time.
//!
//!     cargo run --release -p whistle-evaluation --example rebuild_time -- 100000
//!     just rebuild-time

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;
use whistle_platform::ManualClock;
use whistle_platform::clock::from_millis;
use whistle_platform::testing::TestBed;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cases: usize = 100_000;
    let mut into: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--into" => into = args.next(),
            number => cases = number.parse()?,
        }
    }
    let bed = TestBed::new().await;
    let generated = common::history::generate(cases, 8);
    let messages = common::history::shuffled_with_redeliveries(&generated, 5, 9);
    let published = Instant::now();
    common::history::publish_all(&bed.jetstream, &messages).await;
    println!(
        "published {} events of {cases} cases in {:.1} s",
        messages.len(),
        published.elapsed().as_secs_f64()
    );
    let into = into.unwrap_or_else(|| bed.sqlite_url("evaluation-rebuilt"));
    let clock = Arc::new(ManualClock::new(from_millis(common::history::NOW)));
    let report = whistle_evaluation::rebuild::rebuild(&bed.nats.url(), &into, clock).await?;
    println!(
        "rebuilt {cases} cases ({} messages: {} applied, {} duplicates, {} rejected) in {:.1} s",
        report.messages,
        report.applied,
        report.duplicates,
        report.rejected,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}
