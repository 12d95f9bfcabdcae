//! The department gateway's configuration.

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
pub struct GatewayConfig {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    /// Every service takes the same sections; the gateway publishes nothing itself today, so the
    /// relay settings are validated but unused.
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
    pub dispatch: DispatchConfig,
    pub catalogue: CatalogueConfig,
    /// Bounds on department subscriptions (see docs/operations.md, "Gateway limits").
    #[serde(default)]
    pub subscriptions: SubscriptionsConfig,
}

/// How many `Subscribe` streams a department may hold, and how idle ones learn of notices that
/// other replicas committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// Open `Subscribe` streams per department on one gateway process; beyond it RESOURCE_EXHAUSTED.
    pub max_per_department: usize,
    /// How often the gateway reads the departments' last sequences to wake idle subscriptions for
    /// notices another replica committed (one query per gateway process, not per subscription).
    /// Its own commits wake them at once, without a query.
    pub poll_interval_ms: u64,
    /// How long the notices of a department's own actions (`acknowledged`, `on_site`,
    /// `progressed`, `resolved`: its system made the call and has the answer) may wait for more
    /// events, to be written in one transaction with them. Every other notice — a whistle, an
    /// overdue, the street's decisions — is written as soon as it is in. 0: nothing waits. At
    /// most 1000.
    pub own_action_window_ms: u64,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            max_per_department: 8,
            poll_interval_ms: 1000,
            own_action_window_ms: 20,
        }
    }
}

impl SubscriptionsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.max_per_department) {
            return Err(ConfigError::Invalid(format!(
                "subscriptions.max_per_department must be between 1 and 10000, got {}",
                self.max_per_department
            )));
        }
        if !(50..=60_000).contains(&self.poll_interval_ms) {
            return Err(ConfigError::Invalid(format!(
                "subscriptions.poll_interval_ms must be between 50 and 60000, got {}",
                self.poll_interval_ms
            )));
        }
        if self.own_action_window_ms > 1_000 {
            return Err(ConfigError::Invalid(format!(
                "subscriptions.own_action_window_ms must be at most 1000, got {}",
                self.own_action_window_ms
            )));
        }
        Ok(())
    }

    /// How long a batch of the department's own actions' notices waits for more.
    pub fn own_action_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.own_action_window_ms)
    }
}

/// Where dispatch serves `DispatchService`, to which department actions are forwarded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// `http://host:port`, or `https://host:port` with `ca_file` (dispatch serving `[grpc.tls]`).
    pub url: String,
    /// How long one forwarded action may take before the caller gets UNAVAILABLE.
    pub request_timeout_ms: u64,
    /// A file holding the gateway's service token (role `service`, subject `department-gateway`),
    /// sent to dispatch on every forwarded action; required when `auth.enabled` (docs/security.md).
    #[serde(default)]
    pub service_token_file: Option<std::path::PathBuf>,
    /// The CA (PEM) that signed dispatch's certificate; required with `https://`.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The gateway's client certificate (PEM), when dispatch requires mutual TLS.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
}

impl DispatchConfig {
    /// The TLS settings of the channel to dispatch, `None` for `http://`.
    pub fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
        whistle_platform::config::ClientTlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
        .client_config("dispatch")
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50052".into(),
            request_timeout_ms: 10_000,
            service_token_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// The department registry and, for local runs, the credentials handed to department systems.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// A catalogue JSON file (see deploy/demo/catalogue.json) loaded at start; its departments are upserted.
    pub file: Option<PathBuf>,
    /// A JSON file `{"<department code>": "<token>"}`: at start every department without a
    /// credential gets a fresh token written here (mode 0600); tokens already in it keep working.
    pub credentials_file: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig::on(([127, 0, 0, 1], 50053).into()),
            database: DatabaseConfig::at("sqlite://data/department-gateway.sqlite", 10),
            nats: NatsConfig::default(),
            outbox: OutboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::on(9103),
            auth: whistle_platform::auth::AuthConfig::default(),
            limits: LimitsConfig::default(),
            dispatch: DispatchConfig::default(),
            catalogue: CatalogueConfig::default(),
            subscriptions: SubscriptionsConfig::default(),
        }
    }
}

impl ServiceConfig for GatewayConfig {
    const SERVICE: &'static str = "department-gateway";

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
        self.subscriptions.validate()?;
        let url = self.dispatch.url.as_str();
        let authority = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if authority.is_none_or(|authority| authority.is_empty())
            || url.parse::<tonic::transport::Uri>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "dispatch.url must look like http://host:port, got {url:?}"
            )));
        }
        let tls = self.dispatch.tls()?;
        if url.starts_with("https://") && tls.is_none() {
            return Err(ConfigError::Invalid(format!(
                "dispatch.url {url:?} is https:// but dispatch.ca_file is not set: name the CA that signed dispatch's certificate"
            )));
        }
        if url.starts_with("http://") && tls.is_some() {
            return Err(ConfigError::Invalid(format!(
                "dispatch.ca_file is set but dispatch.url {url:?} is http://: use https://"
            )));
        }
        if self.dispatch.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "dispatch.request_timeout_ms must be at least 1".into(),
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
            crate::catalogue::check(file, 0)
                .map_err(|error| ConfigError::Invalid(format!("catalogue.file: {error:#}")))?;
        }
        if let Some(file) = &self.catalogue.credentials_file
            && file.is_dir()
        {
            return Err(ConfigError::Invalid(format!(
                "catalogue.credentials_file {} is a folder, expected a JSON file",
                file.display()
            )));
        }
        if let Some(file) = &self.catalogue.credentials_file {
            crate::credentials::check_credentials_file(file).map_err(|error| {
                ConfigError::Invalid(format!("catalogue.credentials_file: {error:#}"))
            })?;
            // the gateway writes new tokens beside it
            whistle_platform::config::check_writable_folder("catalogue.credentials_file", file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = GatewayConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.grpc.listen.port(), 50053);
    }

    #[test]
    fn subscription_bounds_are_validated() {
        for (max_per_department, poll_interval_ms, own_action_window_ms) in [
            (0, 1000, 20),
            (8, 0, 20),
            (8, 3_600_000, 20),
            (8, 1000, 1001),
        ] {
            let config = GatewayConfig {
                subscriptions: SubscriptionsConfig {
                    max_per_department,
                    poll_interval_ms,
                    own_action_window_ms,
                },
                ..GatewayConfig::default()
            };
            let error = config.validate().expect_err("out of range");
            assert!(error.to_string().contains("subscriptions."), "{error}");
        }
        assert_eq!(GatewayConfig::default().subscriptions.max_per_department, 8);
    }

    #[test]
    fn dispatch_url_must_be_http() {
        for bad in [
            "",
            "127.0.0.1:50052",
            "nats://127.0.0.1:4222",
            "http://",
            "http://a b",
        ] {
            let mut config = GatewayConfig::default();
            config.dispatch.url = bad.into();
            let error = config.validate().expect_err(bad);
            assert!(error.to_string().contains("dispatch.url"), "{error}");
        }
        let mut config = GatewayConfig::default();
        config.dispatch.url = "http://dispatch.whistle.svc:50052".into();
        assert!(config.validate().is_ok());
        config.dispatch.url = "https://dispatch.whistle.svc:443".into();
        let error = config.validate().expect_err("https without a CA");
        assert!(error.to_string().contains("dispatch.ca_file"), "{error}");
    }
}
