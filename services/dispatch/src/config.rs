//! Dispatch's configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use whistle_platform::admin::AdminConfig;
use whistle_platform::config::{
    ConfigError, DatabaseConfig, GrpcConfig, NatsConfig, OutboxConfig, TelemetryConfig,
};
use whistle_platform::service::ServiceConfig;
use whistle_platform::validation::LimitsConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    pub outbox: OutboxConfig,
    pub telemetry: TelemetryConfig,
    /// The HTTP port of `/metrics`, `/healthz` and `/readyz`.
    pub admin: AdminConfig,
    /// Bearer tokens of people and services (docs/security.md); on by default.
    #[serde(default)]
    pub auth: whistle_platform::auth::AuthConfig,
    /// Lengths and counts of request fields (see docs/operations.md).
    #[serde(default)]
    pub limits: LimitsConfig,
    pub catalogue: CatalogueConfig,
    pub dispatch: DispatchSettings,
    /// The deadline scanner (docs/operations.md, "Deadlines").
    #[serde(default)]
    pub scanner: ScannerConfig,
    /// An optional working-hour calendar: limits of a day or more then count working days
    /// (docs/calendar.md).
    #[serde(default)]
    pub calendar: crate::calendar::CalendarConfig,
}

impl DispatchConfig {
    /// How deadlines are counted: calendar time, or the working days of `[calendar] file`.
    pub fn deadline_policy(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::domain::DeadlinePolicy>, ConfigError> {
        match &self.calendar.file {
            None => Ok(std::sync::Arc::new(crate::domain::CalendarTime)),
            Some(file) => {
                let calendar = crate::calendar::Calendar::load(file)
                    .map_err(|error| ConfigError::Invalid(format!("calendar.file: {error}")))?;
                Ok(std::sync::Arc::new(crate::domain::WorkingHours::new(
                    calendar,
                )))
            }
        }
    }
}

/// How often dispatch looks for clocks whose deadline or escalation time has come, and how many
/// it fires per transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    /// Whether this process scans (every replica may; turning it off leaves deadlines to others).
    #[serde(default = "scanning_by_default")]
    pub enabled: bool,
    /// Pause between scans while nothing is due; a due step fires at most this late.
    pub interval_ms: u64,
    /// Clock steps claimed and fired per transaction; a full batch is followed by the next at once.
    pub batch_size: u64,
}

fn scanning_by_default() -> bool {
    true
}

impl Default for ScannerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 1000,
            batch_size: 100,
        }
    }
}

/// Where the responsibility catalogue (routes) comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// A catalogue JSON file (see deploy/demo/catalogue.json) whose `routes` are upserted at start.
    pub file: Option<PathBuf>,
}

/// Rules of the dispatch centre.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// How far from the case's place an on-site check-in may be.
    pub check_in_radius_meters: f64,
    /// Events applied per transaction by the case consumer.
    pub consumer_batch: usize,
    /// How many times a change of a case is run again when a concurrent change of the same case
    /// got there first, before the caller sees ABORTED.
    pub conflict_retries: u32,
    /// Most department actions written in one transaction: the actions waiting when a writer is
    /// free, up to this many, are applied together (1 writes each alone).
    #[serde(default = "default_action_batch")]
    pub action_batch: usize,
    /// Writers of department actions on PostgreSQL, each running one batch at a time; on SQLite
    /// there is one, as the file has one writer. More than one lets batches overlap, but two
    /// batches holding different departments of one case wait for each other's commit.
    #[serde(default = "default_action_writers")]
    pub action_writers: usize,
}

fn default_action_batch() -> usize {
    64
}

fn default_action_writers() -> usize {
    1
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            check_in_radius_meters: 500.0,
            consumer_batch: 128,
            conflict_retries: 5,
            action_batch: default_action_batch(),
            action_writers: default_action_writers(),
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig::on(([127, 0, 0, 1], 50052).into()),
            database: DatabaseConfig::at("sqlite://data/dispatch.sqlite", 10),
            nats: NatsConfig::default(),
            outbox: OutboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::on(9102),
            auth: whistle_platform::auth::AuthConfig::default(),
            limits: LimitsConfig::default(),
            catalogue: CatalogueConfig::default(),
            dispatch: DispatchSettings::default(),
            scanner: ScannerConfig::default(),
            calendar: crate::calendar::CalendarConfig::default(),
        }
    }
}

impl ServiceConfig for DispatchConfig {
    const SERVICE: &'static str = "dispatch";

    fn grpc(&self) -> &GrpcConfig {
        &self.grpc
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    fn admin(&self) -> &AdminConfig {
        &self.admin
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.database.validate()?;
        self.nats.validate()?;
        self.outbox.validate()?;
        self.telemetry.validate()?;
        self.grpc.validate()?;
        self.auth.validate()?;
        self.limits.validate()?;
        self.deadline_policy()?;
        let largest = crate::bounds::checked_event_sizes(&self.limits).map_err(|error| {
            ConfigError::Invalid(format!("the limits cannot be checked: {error}"))
        })?;
        if let Some((kind, bytes)) = largest
            .iter()
            .filter(|(_, bytes)| **bytes > self.limits.max_event_bytes)
            .max_by_key(|(_, bytes)| **bytes)
        {
            return Err(ConfigError::Invalid(format!(
                "the limits allow a {kind} event of {bytes} bytes, more than limits.max_event_bytes = {}; lower limits.evidence_per_assignment, limits.uri_chars or limits.text_chars",
                self.limits.max_event_bytes
            )));
        }
        if !(self.dispatch.check_in_radius_meters.is_finite()
            && self.dispatch.check_in_radius_meters > 0.0)
        {
            return Err(ConfigError::Invalid(
                "dispatch.check_in_radius_meters must be a positive number".into(),
            ));
        }
        if !(1..=1000).contains(&self.dispatch.consumer_batch) {
            return Err(ConfigError::Invalid(
                "dispatch.consumer_batch must be between 1 and 1000".into(),
            ));
        }
        if !(1..=256).contains(&self.dispatch.action_batch) {
            return Err(ConfigError::Invalid(
                "dispatch.action_batch must be between 1 and 256".into(),
            ));
        }
        if !(1..=64).contains(&self.dispatch.action_writers) {
            return Err(ConfigError::Invalid(
                "dispatch.action_writers must be between 1 and 64".into(),
            ));
        }
        if !(10..=60_000).contains(&self.scanner.interval_ms) {
            return Err(ConfigError::Invalid(
                "scanner.interval_ms must be between 10 and 60000".into(),
            ));
        }
        if !(1..=10_000).contains(&self.scanner.batch_size) {
            return Err(ConfigError::Invalid(
                "scanner.batch_size must be between 1 and 10000".into(),
            ));
        }
        if self.dispatch.conflict_retries > 20 {
            return Err(ConfigError::Invalid(
                "dispatch.conflict_retries must be at most 20".into(),
            ));
        }
        if let Some(file) = &self.catalogue.file
            && !file.is_file()
        {
            return Err(ConfigError::Invalid(format!(
                "catalogue.file {} does not exist",
                file.display()
            )));
        }
        if let Some(file) = &self.catalogue.file {
            crate::catalogue::check(file, &self.limits)
                .map_err(|error| ConfigError::Invalid(format!("catalogue.file: {error:#}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_allow_an_event_over_the_bound_are_refused() {
        let mut config = DispatchConfig::default();
        assert!(config.validate().is_ok());
        config.limits.uri_chars = 8192;
        let error = config.validate().expect_err("evidence too large");
        // the largest: an assignment with all its evidence and texts, and the street's note
        assert!(
            error.to_string().contains("the limits allow a whistle.")
                && error
                    .to_string()
                    .contains("limits.max_event_bytes = 524288"),
            "{error}"
        );
    }
}
