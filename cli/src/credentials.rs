//! `whistle credentials`: department API tokens at the gateway — issue, rotate, revoke, list.
//! Works on the gateway's own database, like `whistle outbox`; tokens are stored only as SHA-256
//! digests, so a new token is printed once and never again. A revoked token is refused within
//! the gateway's credential cache time (5 s).

use chrono::{DateTime, Utc};
use clap::Subcommand;
use std::path::PathBuf;
use whistle_department_gateway::credentials;
use whistle_department_gateway::storage::Migrator;
use whistle_platform::clock::{Clock, SystemClock, to_millis};
use whistle_platform::config::DatabaseConfig;
use whistle_platform::db;

/// The gateway's database.
#[derive(Debug, clap::Args)]
pub struct GatewayDatabase {
    /// The gateway's database URL (`sqlite://data/department-gateway.sqlite`,
    /// `postgres://…/whistle_department_gateway`).
    #[arg(long, env = "WHISTLE_CREDENTIALS_DATABASE")]
    pub database: Option<String>,
    /// Or the `whistle up` data folder whose gateway database to use.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
}

impl GatewayDatabase {
    async fn connect(&self) -> anyhow::Result<sea_orm::DatabaseConnection> {
        let url = match &self.database {
            Some(url) => url.clone(),
            None => {
                let file = self.data_dir.join("department-gateway.sqlite");
                if !file.is_file() {
                    anyhow::bail!("{} does not exist (is --data-dir right?)", file.display());
                }
                format!("sqlite://{}", file.display())
            }
        };
        let database = db::connect(&DatabaseConfig::at(url, 1)).await?;
        // the same migrations the gateway runs at start: a database of an older gateway gains the
        // expiry and revocation columns
        db::migrate::<Migrator>(&database).await?;
        Ok(database)
    }
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Issue a new token to a department (printed once; only its digest is stored).
    Issue {
        #[command(flatten)]
        target: GatewayDatabase,
        #[arg(long)]
        department: String,
        /// Days until the token expires; none: it does not expire.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Issue a new token and let the department's other live tokens expire after a grace period.
    Rotate {
        #[command(flatten)]
        target: GatewayDatabase,
        #[arg(long)]
        department: String,
        /// Hours the old tokens keep working, so the department can switch without an outage.
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
        /// Days until the new token expires; none: it does not expire.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke a department's tokens (all live ones, or those whose digest starts with --digest).
    Revoke {
        #[command(flatten)]
        target: GatewayDatabase,
        #[arg(long)]
        department: String,
        /// Digest prefix from `whistle credentials list`.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Every credential: department, digest prefix, created, expires, revoked.
    List {
        #[command(flatten)]
        target: GatewayDatabase,
    },
}

fn at(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn days_ms(days: Option<u32>, now_ms: i64) -> Option<i64> {
    days.map(|days| now_ms + i64::from(days) * 86_400_000)
}

pub async fn run(command: CredentialsCommand) -> anyhow::Result<()> {
    let now_ms = to_millis(SystemClock.now());
    match command {
        CredentialsCommand::Issue {
            target,
            department,
            expires_in_days,
        } => {
            let database = target.connect().await?;
            let expires = days_ms(expires_in_days, now_ms);
            let token = credentials::issue_token(&database, &department, expires, now_ms).await?;
            println!("{token}");
            eprintln!(
                "token of {department} issued{}; it is shown only now",
                expires.map_or(String::new(), |ms| format!(", expires {} UTC", at(ms)))
            );
            database.close().await?;
        }
        CredentialsCommand::Rotate {
            target,
            department,
            grace_hours,
            expires_in_days,
        } => {
            let database = target.connect().await?;
            let expires = days_ms(expires_in_days, now_ms);
            let token = credentials::issue_token(&database, &department, expires, now_ms).await?;
            let grace_ends = now_ms + i64::from(grace_hours) * 3_600_000;
            let digest = whistle_department_gateway::domain::token_digest(&token);
            let old = credentials::expire_live_tokens(&database, &department, grace_ends, &digest)
                .await?;
            println!("{token}");
            eprintln!(
                "new token of {department} issued (shown only now); {old} older token(s) stop working at {} UTC",
                at(grace_ends)
            );
            database.close().await?;
        }
        CredentialsCommand::Revoke {
            target,
            department,
            digest,
        } => {
            let database = target.connect().await?;
            let count =
                credentials::revoke(&database, &department, digest.as_deref(), now_ms).await?;
            println!(
                "{count} token(s) of {department} revoked; running gateways refuse them within {} s",
                credentials::CREDENTIAL_CACHE_TTL.as_secs()
            );
            database.close().await?;
        }
        CredentialsCommand::List { target } => {
            let database = target.connect().await?;
            let listed = credentials::list(&database).await?;
            println!(
                "{:<20}  {:<12}  {:<19}  {:<19}  revoked (UTC)",
                "department", "digest", "created (UTC)", "expires (UTC)"
            );
            for credential in listed {
                println!(
                    "{:<20}  {:<12}  {:<19}  {:<19}  {}",
                    credential.department_code,
                    credential.digest_prefix,
                    at(credential.created_at_ms),
                    credential.expires_at_ms.map_or("never".to_string(), at),
                    credential.revoked_at_ms.map_or(String::new(), at),
                );
            }
            database.close().await?;
        }
    }
    Ok(())
}
