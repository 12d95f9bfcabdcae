//! `whistle outbox`: what an operator needs when a service's outbox parked events it could not
//! publish (too large for the NATS server, refused by it): list them, and put them back in line once
//! the cause is fixed. Reads the service's own database directly, like a migration tool would.

use clap::Subcommand;
use std::path::PathBuf;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::{db, outbox};

/// Which service's outbox.
#[derive(Debug, clap::Args)]
pub struct OutboxTarget {
    /// The service's database URL (`sqlite://data/intake.sqlite`, `postgres://…/whistle_intake`).
    #[arg(long, env = "WHISTLE_OUTBOX_DATABASE", conflicts_with = "service")]
    pub database: Option<String>,
    /// Or the service of a `whistle up` data folder: intake, dispatch, department-gateway, evaluation.
    #[arg(long)]
    pub service: Option<String>,
    /// The `whistle up` data folder used with --service.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
}

impl OutboxTarget {
    fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database {
            return Ok(url.clone());
        }
        let Some(service) = &self.service else {
            anyhow::bail!("name the outbox: --database <url> or --service <name>");
        };
        if !["intake", "dispatch", "department-gateway", "evaluation"].contains(&service.as_str()) {
            anyhow::bail!(
                "--service must be intake, dispatch, department-gateway or evaluation, got {service:?}"
            );
        }
        let file = self.data_dir.join(format!("{service}.sqlite"));
        if !file.is_file() {
            anyhow::bail!("{} does not exist (is --data-dir right?)", file.display());
        }
        Ok(format!("sqlite://{}", file.display()))
    }
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Events the relay gave up on, oldest first.
    ListParked {
        #[command(flatten)]
        target: OutboxTarget,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put parked events back in line (all of them, or the ids given), e.g. after raising the NATS
    /// server's max_payload. Events that still cannot be published are parked again.
    Retry {
        #[command(flatten)]
        target: OutboxTarget,
        /// Outbox ids from `list-parked`; none means every parked event.
        ids: Vec<i64>,
    },
}

pub async fn run(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::ListParked { target, json } => {
            let database = db::connect(&DatabaseConfig::at(target.url()?, 1)).await?;
            let parked = outbox::list_parked(&database).await?;
            if json {
                for row in &parked {
                    let line = serde_json::json!({
                        "id": row.id,
                        "event_id": row.event_id,
                        "subject": row.subject,
                        "payload_bytes": row.payload.len(),
                        "attempts": row.attempts,
                        "created_at_ms": row.created_at_ms,
                        "parked_at_ms": row.parked_at_ms,
                        "last_error": row.last_error,
                    });
                    println!("{line}");
                }
            } else if parked.is_empty() {
                println!("no parked events");
            } else {
                println!(
                    "{:>6}  {:<36}  {:>9}  {:>8}  {:<24}  subject / error",
                    "id", "event id", "bytes", "attempts", "parked at (UTC)"
                );
                for row in &parked {
                    let parked_at = row
                        .parked_at_ms
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default();
                    println!(
                        "{:>6}  {:<36}  {:>9}  {:>8}  {:<24}  {}",
                        row.id,
                        row.event_id,
                        row.payload.len(),
                        row.attempts,
                        parked_at,
                        row.subject
                    );
                    println!(
                        "{:>6}  {}",
                        "",
                        row.last_error.as_deref().unwrap_or("(no error recorded)")
                    );
                }
                println!(
                    "{} parked; `whistle outbox retry` puts them back in line",
                    parked.len()
                );
            }
            database.close().await?;
        }
        OutboxCommand::Retry { target, ids } => {
            let database = db::connect(&DatabaseConfig::at(target.url()?, 1)).await?;
            let count = outbox::retry_parked(&database, &ids).await?;
            println!(
                "{count} parked events put back in line; the relay publishes them on its next round"
            );
            database.close().await?;
        }
    }
    Ok(())
}
