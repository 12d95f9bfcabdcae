//! Intake's configuration.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// Bearer tokens of people and services (docs/security.md); on by default.
    #[serde(default)]
    pub auth: whistle_platform::auth::AuthConfig,
    /// Lengths and counts of request fields (see docs/operations.md).
    #[serde(default)]
    pub limits: LimitsConfig,
    pub catalogue: CatalogueConfig,
    /// Open311 GeoReport v2 over HTTP.
    #[serde(default)]
    pub open311: Open311Config,
    /// Joining duplicate reports to an open case.
    #[serde(default)]
    pub merging: MergingConfig,
    /// Flagging problems that keep coming back (几经反复).
    #[serde(default)]
    pub recurrence: RecurrenceConfig,
    /// Photo references added to a case after its report (`AttachEvidence`).
    #[serde(default)]
    pub evidence: EvidenceConfig,
}

/// Where the region/grid registry and the category catalogue come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogueConfig {
    /// A catalogue JSON file (see deploy/demo/catalogue.json) loaded at start; entries are upserted.
    pub file: Option<PathBuf>,
    /// How often a replica looks whether another one changed the registry (`ImportGrids`).
    pub reload_interval_ms: u64,
    /// Areas in one `ImportGrids` request, at most.
    pub max_import_areas: usize,
    /// Vertices of one boundary, at most.
    pub max_boundary_points: usize,
}

impl Default for CatalogueConfig {
    fn default() -> Self {
        Self {
            file: None,
            reload_interval_ms: 5000,
            max_import_areas: 5000,
            max_boundary_points: 10_000,
        }
    }
}

impl CatalogueConfig {
    /// The longest WKT text accepted: a vertex is two numbers of at most ~24 characters each.
    pub fn max_wkt_chars(&self) -> usize {
        self.max_boundary_points
            .saturating_mul(52)
            .saturating_add(64)
    }
}

/// Open311 GeoReport v2 on its own HTTP port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Open311Config {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// API keys allowed to POST requests: one per line, `<key>` or `<key> <client name>`; `#`
    /// starts a comment. Required when enabled.
    pub api_keys_file: Option<PathBuf>,
    /// When set, a request naming another `jurisdiction_id` is 404; when unset the parameter is
    /// ignored, as the spec allows an endpoint that serves one jurisdiction.
    pub jurisdiction_id: Option<String>,
    /// Where the API is reached from outside, for the discovery document; the request's Host
    /// header when unset.
    pub public_url: Option<String>,
}

impl Default for Open311Config {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: ([127, 0, 0, 1], 50055).into(),
            api_keys_file: None,
            jurisdiction_id: None,
            public_url: None,
        }
    }
}

/// How close and how recent a report must be to an open case of its category to join it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MergingConfig {
    pub enabled: bool,
    pub distance_meters: f64,
    pub window_hours: u64,
    /// Categories whose reports always open a case of their own.
    pub always_separate: Vec<String>,
    /// Per-category distance and window, overriding the two above.
    pub categories: BTreeMap<String, CategoryMerging>,
}

/// A category's own merge distance and window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CategoryMerging {
    pub distance_meters: Option<f64>,
    pub window_hours: Option<u64>,
}

impl Default for MergingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            distance_meters: 50.0,
            window_hours: 24,
            always_separate: Vec::new(),
            categories: BTreeMap::new(),
        }
    }
}

/// When a new report is flagged recurrent: `cases` cases of its category closed within `days`
/// within the merge distance of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecurrenceConfig {
    pub enabled: bool,
    pub cases: usize,
    pub days: u64,
}

impl Default for RecurrenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cases: 3,
            days: 30,
        }
    }
}

/// Bounds of evidence attached to a case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// Items a case keeps over all `AttachEvidence` calls (each call at most `limits.attachments`).
    pub max_per_case: usize,
    /// Largest file a reference may describe.
    pub max_size_bytes: u64,
    /// Accepted media types: an entry ending in `/` accepts the whole type (`image/`).
    pub media_types: Vec<String>,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            max_per_case: 50,
            max_size_bytes: 50 * 1024 * 1024,
            media_types: vec!["image/".into(), "video/".into()],
        }
    }
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
            auth: whistle_platform::auth::AuthConfig::default(),
            limits: LimitsConfig::default(),
            catalogue: CatalogueConfig::default(),
            open311: Open311Config::default(),
            merging: MergingConfig::default(),
            recurrence: RecurrenceConfig::default(),
            evidence: EvidenceConfig::default(),
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
        self.auth.validate()?;
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
            crate::catalogue::check(file, &self.catalogue)
                .map_err(|error| ConfigError::Invalid(format!("catalogue.file: {error:#}")))?;
        }
        self.validate_catalogue()?;
        self.validate_open311()?;
        self.validate_merging()?;
        self.validate_recurrence_and_evidence()
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

impl IntakeConfig {
    fn validate_catalogue(&self) -> Result<(), ConfigError> {
        if self.catalogue.reload_interval_ms == 0 {
            return Err(invalid("catalogue.reload_interval_ms must be at least 1"));
        }
        if self.catalogue.max_import_areas == 0 {
            return Err(invalid("catalogue.max_import_areas must be at least 1"));
        }
        if self.catalogue.max_boundary_points < 4 {
            return Err(invalid(
                "catalogue.max_boundary_points must be at least 4 (a triangle and its closing point)",
            ));
        }
        Ok(())
    }

    fn validate_open311(&self) -> Result<(), ConfigError> {
        if !self.open311.enabled {
            return Ok(());
        }
        if self.open311.listen == self.grpc.listen && self.grpc.listen.port() != 0 {
            return Err(invalid("open311.listen must differ from grpc.listen"));
        }
        let Some(file) = &self.open311.api_keys_file else {
            return Err(invalid(
                "open311.api_keys_file is required when open311.enabled = true",
            ));
        };
        let keys = crate::open311::ApiKeys::read(file)
            .map_err(|error| invalid(format!("open311.api_keys_file: {error}")))?;
        if keys.is_empty() {
            return Err(invalid(format!(
                "open311.api_keys_file {} holds no key",
                file.display()
            )));
        }
        Ok(())
    }

    fn validate_merging(&self) -> Result<(), ConfigError> {
        let merging = &self.merging;
        let check_distance = |name: &str, meters: f64| {
            if !(meters.is_finite() && (1.0..=5000.0).contains(&meters)) {
                return Err(invalid(format!(
                    "{name} must be between 1 and 5000 metres, got {meters}"
                )));
            }
            Ok(())
        };
        let check_window = |name: &str, hours: u64| {
            if !(1..=24 * 365).contains(&hours) {
                return Err(invalid(format!(
                    "{name} must be between 1 and 8760 hours, got {hours}"
                )));
            }
            Ok(())
        };
        check_distance("merging.distance_meters", merging.distance_meters)?;
        check_window("merging.window_hours", merging.window_hours)?;
        for code in &merging.always_separate {
            crate::domain::CategoryCode::parse(code).map_err(|reason| {
                invalid(format!("merging.always_separate: {code:?}: {reason}"))
            })?;
        }
        for (code, category) in &merging.categories {
            crate::domain::CategoryCode::parse(code)
                .map_err(|reason| invalid(format!("merging.categories: {code:?}: {reason}")))?;
            if let Some(meters) = category.distance_meters {
                check_distance(
                    &format!("merging.categories.{code}.distance_meters"),
                    meters,
                )?;
            }
            if let Some(hours) = category.window_hours {
                check_window(&format!("merging.categories.{code}.window_hours"), hours)?;
            }
        }
        Ok(())
    }

    fn validate_recurrence_and_evidence(&self) -> Result<(), ConfigError> {
        if !(2..=100).contains(&self.recurrence.cases) {
            return Err(invalid("recurrence.cases must be between 2 and 100"));
        }
        if !(1..=3650).contains(&self.recurrence.days) {
            return Err(invalid("recurrence.days must be between 1 and 3650"));
        }
        if self.evidence.max_per_case < self.limits.attachments {
            return Err(invalid(
                "evidence.max_per_case must be at least limits.attachments",
            ));
        }
        if self.evidence.max_size_bytes == 0 {
            return Err(invalid("evidence.max_size_bytes must be at least 1"));
        }
        if self.evidence.media_types.is_empty()
            || self
                .evidence
                .media_types
                .iter()
                .any(|media_type| !media_type.contains('/'))
        {
            return Err(invalid(
                "evidence.media_types must list media types (image/jpeg) or whole types (image/)",
            ));
        }
        Ok(())
    }
}
