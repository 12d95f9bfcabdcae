//! Evaluation's configuration.

use crate::domain::{SatisfactionScope, Scoring, UtcOffset, Weights};
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
pub struct EvaluationConfig {
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
    pub evaluation: EvaluationSettings,
}

/// Where the department registry (code, name, level, region) comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// A catalogue JSON file (see deploy/demo/catalogue.json); its `departments` are upserted at start.
    pub file: Option<PathBuf>,
}

/// How scores are computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSettings {
    /// Periods start at local midnight in this time zone (China: 8).
    pub utc_offset_hours: i32,
    /// Events applied per database transaction, at most.
    pub consumer_max_batch: usize,
    /// After a batch's first event, how long the consumer waits for more before applying it
    /// (0: at once). Evaluation is off the path a department's notice waits on, so its events can
    /// wait a little to be applied in fewer, larger transactions; a scorecard counts a case up to
    /// this much later. At most 1000.
    #[serde(default = "default_consumer_batch_window_ms")]
    pub consumer_batch_window_ms: u64,
    pub weights: WeightsConfig,
    /// A department with fewer assignments whistled in a period is "not rated" for it: no
    /// composite, listed last in rankings. At least 1.
    #[serde(default = "default_minimum_assignments")]
    pub minimum_assignments: u64,
    /// Whose call-backs count in 满意率: "lead" (the case's lead department, default) or
    /// "resolvers" (every department that resolved its part).
    #[serde(default = "default_satisfaction_scope")]
    pub satisfaction_scope: String,
    /// The dispute window (申诉期): a month is closed automatically this many days after it ended
    /// (its cards frozen and published); 0 closes periods only through `ClosePeriod`.
    #[serde(default = "default_close_after_days")]
    pub close_after_days: u32,
}

fn default_consumer_batch_window_ms() -> u64 {
    20
}

fn default_close_after_days() -> u32 {
    10
}

fn default_minimum_assignments() -> u64 {
    Scoring::default().minimum_assignments
}

fn default_satisfaction_scope() -> String {
    SatisfactionScope::default().as_str().to_string()
}

/// The weights of the composite; only their ratios matter (see DOMAIN.md, "Evaluation").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsConfig {
    pub report_rate: f64,
    pub on_site_rate: f64,
    pub resolution_rate: f64,
    pub on_time_rate: f64,
    pub cooperation: f64,
    pub satisfaction: f64,
    pub rework: f64,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        let weights = Weights::default();
        Self {
            report_rate: weights.report_rate,
            on_site_rate: weights.on_site_rate,
            resolution_rate: weights.resolution_rate,
            on_time_rate: weights.on_time_rate,
            cooperation: weights.cooperation,
            satisfaction: weights.satisfaction,
            rework: weights.rework,
        }
    }
}

impl WeightsConfig {
    pub fn to_weights(&self) -> Weights {
        Weights {
            report_rate: self.report_rate,
            on_site_rate: self.on_site_rate,
            resolution_rate: self.resolution_rate,
            on_time_rate: self.on_time_rate,
            cooperation: self.cooperation,
            satisfaction: self.satisfaction,
            rework: self.rework,
        }
    }
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        Self {
            utc_offset_hours: 8,
            consumer_max_batch: 256,
            consumer_batch_window_ms: default_consumer_batch_window_ms(),
            weights: WeightsConfig::default(),
            minimum_assignments: default_minimum_assignments(),
            satisfaction_scope: default_satisfaction_scope(),
            close_after_days: default_close_after_days(),
        }
    }
}

impl EvaluationSettings {
    /// How long a consumer batch waits for more events after its first.
    pub fn batch_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.consumer_batch_window_ms)
    }

    /// The scoring configuration, validated: the weights, the minimum sample and the satisfaction
    /// scope; names the setting that is wrong.
    pub fn scoring(&self) -> Result<Scoring, ConfigError> {
        let weights = self.weights.to_weights();
        weights
            .validate()
            .map_err(|reason| ConfigError::Invalid(format!("evaluation.weights.{reason}")))?;
        if !(1..=1_000_000).contains(&self.minimum_assignments) {
            return Err(ConfigError::Invalid(format!(
                "evaluation.minimum_assignments must be between 1 and 1000000, got {}",
                self.minimum_assignments
            )));
        }
        let satisfaction_scope =
            SatisfactionScope::parse(&self.satisfaction_scope).map_err(|reason| {
                ConfigError::Invalid(format!("evaluation.satisfaction_scope {reason}"))
            })?;
        Ok(Scoring {
            weights,
            minimum_assignments: self.minimum_assignments,
            satisfaction_scope,
        })
    }

    pub fn utc_offset(&self) -> Result<UtcOffset, ConfigError> {
        UtcOffset::from_hours(self.utc_offset_hours)
            .map_err(|reason| ConfigError::Invalid(format!("evaluation.utc_offset_hours {reason}")))
    }
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            grpc: GrpcConfig::on(([127, 0, 0, 1], 50054).into()),
            database: DatabaseConfig::at("sqlite://data/evaluation.sqlite", 10),
            nats: NatsConfig::default(),
            outbox: OutboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::on(9104),
            auth: whistle_platform::auth::AuthConfig::default(),
            limits: LimitsConfig::default(),
            catalogue: CatalogueConfig::default(),
            evaluation: EvaluationSettings::default(),
        }
    }
}

impl ServiceConfig for EvaluationConfig {
    const SERVICE: &'static str = "evaluation";

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
        self.evaluation.utc_offset()?;
        if !(1..=10_000).contains(&self.evaluation.consumer_max_batch) {
            return Err(ConfigError::Invalid(
                "evaluation.consumer_max_batch must be between 1 and 10000".into(),
            ));
        }
        if self.evaluation.consumer_batch_window_ms > 1_000 {
            return Err(ConfigError::Invalid(
                "evaluation.consumer_batch_window_ms must be at most 1000".into(),
            ));
        }
        self.evaluation.scoring()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_domain_md() {
        let config = EvaluationConfig::default();
        config.validate().expect("defaults are valid");
        assert_eq!(config.grpc.listen.port(), 50054);
        assert_eq!(config.database.url, "sqlite://data/evaluation.sqlite");
        assert_eq!(config.evaluation.utc_offset_hours, 8);
        let weights = config.evaluation.weights;
        assert_eq!(
            (
                weights.report_rate,
                weights.resolution_rate,
                weights.cooperation,
                weights.satisfaction,
                weights.rework
            ),
            (25.0, 30.0, 15.0, 20.0, 10.0)
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let mut config = EvaluationConfig::default();
        config.evaluation.weights.satisfaction = -1.0;
        let error = config.validate().expect_err("negative weight");
        assert!(
            error
                .to_string()
                .contains("evaluation.weights.satisfaction"),
            "{error}"
        );

        let mut config = EvaluationConfig::default();
        config.evaluation.utc_offset_hours = 20;
        let error = config.validate().expect_err("bad offset");
        assert!(
            error.to_string().contains("evaluation.utc_offset_hours"),
            "{error}"
        );

        let mut config = EvaluationConfig::default();
        config.evaluation.weights = WeightsConfig {
            report_rate: 0.0,
            on_site_rate: 0.0,
            resolution_rate: 0.0,
            on_time_rate: 0.0,
            cooperation: 0.0,
            satisfaction: 0.0,
            rework: 0.0,
        };
        assert!(config.validate().is_err());

        let mut config = EvaluationConfig::default();
        config.evaluation.consumer_batch_window_ms = 5_000;
        let error = config.validate().expect_err("window too long");
        assert!(
            error
                .to_string()
                .contains("evaluation.consumer_batch_window_ms"),
            "{error}"
        );
    }

    #[test]
    fn a_file_overrides_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("evaluation.toml");
        std::fs::write(
            &file,
            "[evaluation]\nutc_offset_hours = 0\n[evaluation.weights]\nrework = 0\n",
        )
        .expect("write");
        let config = EvaluationConfig::load(Some(&file)).expect("load");
        assert_eq!(config.evaluation.utc_offset_hours, 0);
        assert_eq!(config.evaluation.weights.rework, 0.0);
        assert_eq!(config.evaluation.weights.report_rate, 25.0);
    }

    #[test]
    fn scoring_options_are_validated_and_named() {
        let config = EvaluationConfig::default();
        let scoring = config.evaluation.scoring().expect("defaults are valid");
        assert_eq!(scoring.minimum_assignments, 1);
        assert_eq!(scoring.satisfaction_scope, SatisfactionScope::Lead);

        let mut config = EvaluationConfig::default();
        config.evaluation.minimum_assignments = 0;
        let error = config.validate().expect_err("no minimum");
        assert!(
            error.to_string().contains("evaluation.minimum_assignments"),
            "{error}"
        );
        let mut config = EvaluationConfig::default();
        config.evaluation.satisfaction_scope = "everyone".into();
        let error = config.validate().expect_err("unknown scope");
        assert!(
            error.to_string().contains("evaluation.satisfaction_scope"),
            "{error}"
        );
        let mut config = EvaluationConfig::default();
        config.evaluation.minimum_assignments = 5;
        config.evaluation.satisfaction_scope = "resolvers".into();
        let scoring = config.evaluation.scoring().expect("valid");
        assert_eq!(scoring.minimum_assignments, 5);
        assert_eq!(scoring.satisfaction_scope, SatisfactionScope::Resolvers);
    }
}
