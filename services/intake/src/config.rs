//! Intake's configuration.

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
pub struct IntakeConfig {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    pub outbox: OutboxConfig,
    pub telemetry: TelemetryConfig,
    /// The HTTP port of `/metrics`, `/healthz` and `/readyz`.
    pub admin: AdminConfig,
    /// Lengths and counts of request fields (see docs/operations.md).
    #[serde(default)]
    pub limits: LimitsConfig,
    pub catalogue: CatalogueConfig,
}

/// Where the region/grid registry and the category catalogue come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// A catalogue JSON file (see deploy/demo/catalogue.json) loaded at start; entries are upserted.
    pub file: Option<PathBuf>,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig::on(([127, 0, 0, 1], 50051).into()),
            database: DatabaseConfig::at("sqlite://data/intake.sqlite", 10),
            nats: NatsConfig::default(),
            outbox: OutboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::on(9101),
            limits: LimitsConfig::default(),
            catalogue: CatalogueConfig::default(),
        }
    }
}

impl ServiceConfig for IntakeConfig {
    const SERVICE: &'static str = "intake";

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
        self.limits.validate()?;
        let largest = crate::grpc::largest_event_bytes(&self.limits).map_err(|error| {
            ConfigError::Invalid(format!("the limits leave no valid report: {error}"))
        })?;
        if largest > self.limits.max_event_bytes {
            return Err(ConfigError::Invalid(format!(
                "the limits allow a case.reported event of {largest} bytes, more than limits.max_event_bytes = {}; lower limits.text_chars, limits.uri_chars or limits.attachments",
                self.limits.max_event_bytes
            )));
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
            crate::catalogue::check(file)
                .map_err(|error| ConfigError::Invalid(format!("catalogue.file: {error:#}")))?;
        }
        Ok(())
    }
}
