//! Layered configuration: built-in defaults < an optional TOML file < environment variables
//! `WHISTLE_<SERVICE>__<SECTION>__<KEY>` (e.g. `WHISTLE_INTAKE__GRPC__LISTEN=0.0.0.0:50051`).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::path::Path;

/// Exit code for a configuration that cannot be used (EX_CONFIG-style, sysexits' EX_USAGE).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Why a configuration was refused. The message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads a service configuration. `service` is the service name as in `intake` or
/// `department-gateway`; its environment prefix is `WHISTLE_INTAKE`, `WHISTLE_DEPARTMENT_GATEWAY`.
pub fn load<T>(service: &str, defaults: &T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut builder = config::Config::builder().add_source(config::Config::try_from(defaults)?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    let prefix = env_prefix(service);
    builder = builder.add_source(
        config::Environment::with_prefix(&prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    Ok(builder.build()?.try_deserialize()?)
}

/// `WHISTLE_DEPARTMENT_GATEWAY` for `department-gateway`.
pub fn env_prefix(service: &str) -> String {
    format!("WHISTLE_{}", service.to_uppercase().replace('-', "_"))
}

/// Where and how a service serves gRPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
    /// Open connections at most; beyond it new connections wait in the listen queue.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (a healthy HTTP/2 client answers
    /// the keep-alive pings, so only dead or silent connections reach it).
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// HTTP/2 keep-alive ping interval; a ping unanswered for as long again closes the connection.
    #[serde(default = "defaults::keepalive_interval_secs")]
    pub keepalive_interval_secs: u64,
    /// Concurrent calls and streams on one connection.
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// On shutdown, how long calls in flight may take and clients may keep their connections
    /// before they are closed (keep it below Kubernetes' terminationGracePeriodSeconds).
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Calls per second one caller may make, sustained (0 turns the limit off); beyond it,
    /// RESOURCE_EXHAUSTED with a retry hint. A caller is its credential, else its connection.
    #[serde(default = "defaults::rate_per_second")]
    pub rate_per_second: u32,
    /// Calls one caller may make at once above the sustained rate.
    #[serde(default = "defaults::rate_burst")]
    pub rate_burst: u32,
    /// `[grpc.tls]`: serve over TLS (rustls); without it the port speaks plaintext HTTP/2.
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM), e.g. cert-manager's `tls.crt`.
    pub cert_file: std::path::PathBuf,
    /// Its private key (PEM), e.g. `tls.key`.
    pub key_file: std::path::PathBuf,
    /// With it, mutual TLS: only clients with a certificate signed by this CA (PEM, `ca.crt`) get in.
    #[serde(default)]
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// Reads a PEM file for a setting, refusing a missing, unreadable or non-PEM file by name.
pub fn read_pem(setting: &str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(file).map_err(|error| {
        ConfigError::Invalid(format!(
            "{setting} {}: cannot read it: {error}",
            file.display()
        ))
    })?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(ConfigError::Invalid(format!(
            "{setting} {} is not a PEM file",
            file.display()
        )));
    }
    Ok(bytes)
}

impl ServerTlsFiles {
    /// The rustls server configuration: identity, and client CA for mutual TLS.
    pub fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, ConfigError> {
        let identity = tonic::transport::Identity::from_pem(
            read_pem("grpc.tls.cert_file", &self.cert_file)?,
            read_pem("grpc.tls.key_file", &self.key_file)?,
        );
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read_pem(
                "grpc.tls.client_ca_file",
                ca,
            )?));
        }
        Ok(config)
    }
}

/// The TLS settings of a gRPC client (`<section>.ca_file`, and a certificate for mutual TLS).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// The CA (PEM) that signed the server's certificate; with an `https://` URL.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The client's own certificate (PEM) for a server that requires mutual TLS.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
}

impl ClientTlsFiles {
    /// The rustls client configuration, `None` when no CA is set. `section` names the settings in
    /// errors (e.g. `dispatch`).
    pub fn client_config(
        &self,
        section: &str,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, ConfigError> {
        let Some(ca) = &self.ca_file else {
            if self.cert_file.is_some() || self.key_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{section}.cert_file and {section}.key_file need {section}.ca_file"
                )));
            }
            return Ok(None);
        };
        let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read_pem(&format!("{section}.ca_file"), ca)?),
        );
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(tonic::transport::Identity::from_pem(
                    read_pem(&format!("{section}.cert_file"), cert)?,
                    read_pem(&format!("{section}.key_file"), key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{section}.cert_file and {section}.key_file go together"
                )));
            }
        }
        Ok(Some(config))
    }
}

mod defaults {
    pub fn max_connections() -> usize {
        4096
    }
    pub fn idle_timeout_secs() -> u64 {
        60
    }
    pub fn keepalive_interval_secs() -> u64 {
        20
    }
    pub fn max_concurrent_streams() -> u32 {
        200
    }
    pub fn shutdown_grace_secs() -> u64 {
        10
    }
    pub fn rate_per_second() -> u32 {
        2000
    }
    pub fn rate_burst() -> u32 {
        4000
    }
    pub fn read_connections() -> u32 {
        4
    }
    pub fn statement_cache() -> usize {
        super::DEFAULT_STATEMENT_CACHE
    }
    pub fn acquire_timeout_ms() -> u64 {
        5000
    }
    pub fn max_attempts() -> u32 {
        5
    }
}

impl GrpcConfig {
    /// Serving on `listen` with the default connection limits.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_connections: defaults::max_connections(),
            idle_timeout_secs: defaults::idle_timeout_secs(),
            keepalive_interval_secs: defaults::keepalive_interval_secs(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            shutdown_grace_secs: defaults::shutdown_grace_secs(),
            rate_per_second: defaults::rate_per_second(),
            rate_burst: defaults::rate_burst(),
            tls: None,
        }
    }

    /// The per-caller rate limit, `None` when `rate_per_second` is 0.
    pub fn caller_rate(&self) -> Option<crate::rate_limit::Rate> {
        (self.rate_per_second > 0).then(|| crate::rate_limit::Rate {
            per_second: f64::from(self.rate_per_second),
            burst: f64::from(self.rate_burst),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "grpc.max_connections must be at least 1".into(),
            ));
        }
        if self.keepalive_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "grpc.keepalive_interval_secs must be at least 1".into(),
            ));
        }
        if self.idle_timeout_secs <= self.keepalive_interval_secs {
            return Err(ConfigError::Invalid(format!(
                "grpc.idle_timeout_secs ({}) must exceed grpc.keepalive_interval_secs ({}), or idle healthy connections are cut",
                self.idle_timeout_secs, self.keepalive_interval_secs
            )));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(
                "grpc.max_concurrent_streams must be at least 1".into(),
            ));
        }
        if self.rate_per_second > 0 && self.rate_burst == 0 {
            return Err(ConfigError::Invalid(
                "grpc.rate_burst must be at least 1 while grpc.rate_per_second is set (0 turns the limit off)".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.server_config()?;
        }
        Ok(())
    }
}

/// The service's own database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://data/intake.sqlite` or `postgres://user@host/whistle_intake`.
    pub url: String,
    /// Pool size; SQLite always uses one connection (a single writer, see docs/operations.md).
    pub max_connections: u32,
    /// How long a call waits for a pooled connection before it fails with UNAVAILABLE.
    #[serde(default = "defaults::acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// SQLite only: read-only connections beside the single writer, for the long reads
    /// (scorecards over a period), so they neither wait for the writer nor hold it up; 0 for none
    /// (reads share the writer's connection). PostgreSQL reads share the pool.
    #[serde(default = "defaults::read_connections")]
    pub read_connections: u32,
    /// Prepared statements kept per connection (sqlx's cache, least recently used out; 0 keeps
    /// none). Each multi-row statement size is its own statement, so a busy service runs a few
    /// hundred; fewer kept means less memory and more parsing (docs/operations.md).
    #[serde(default = "defaults::statement_cache")]
    pub statement_cache: usize,
}

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let supported = ["sqlite:", "postgres://", "postgresql://"];
        if !supported.iter().any(|scheme| self.url.starts_with(scheme)) {
            return Err(ConfigError::Invalid(format!(
                "database.url must start with sqlite:, postgres:// or postgresql://, got {:?}",
                redact_url(&self.url)
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database.max_connections must be at least 1".into(),
            ));
        }
        if self.acquire_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "database.acquire_timeout_ms must be at least 1".into(),
            ));
        }
        if self.statement_cache > MAX_STATEMENT_CACHE {
            return Err(ConfigError::Invalid(format!(
                "database.statement_cache must be at most {MAX_STATEMENT_CACHE}, got {}",
                self.statement_cache
            )));
        }
        if let Some(path) = crate::db::sqlite_path(&self.url) {
            check_writable_folder("database.url", std::path::Path::new(&path))?;
        }
        Ok(())
    }

    /// A database URL with the default pool settings.
    pub fn at(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: url.into(),
            max_connections,
            acquire_timeout_ms: defaults::acquire_timeout_ms(),
            read_connections: defaults::read_connections(),
            statement_cache: defaults::statement_cache(),
        }
    }
}

/// Prepared statements a connection keeps unless `database.statement_cache` says otherwise (sqlx's
/// own default is 100: a service's multi-row statements come in one shape per row count, so
/// dispatch alone runs about 200 distinct statements under load, and with 100 kept most batches
/// prepared their statements again).
pub const DEFAULT_STATEMENT_CACHE: usize = 1024;

/// The most prepared statements a connection may keep (`database.statement_cache`).
pub const MAX_STATEMENT_CACHE: usize = 16_384;

/// Refuses a file path whose folder cannot be created or written, naming the setting.
pub fn check_writable_folder(setting: &str, file: &Path) -> Result<(), ConfigError> {
    let folder = match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let unusable = |error: std::io::Error| {
        ConfigError::Invalid(format!(
            "{setting}: cannot write in folder {}: {error}",
            folder.display()
        ))
    };
    std::fs::create_dir_all(folder).map_err(unusable)?;
    // permission bits say little to root or on a read-only mount: try it
    let probe = folder.join(format!(".whistle-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(unusable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The NATS server and the JetStream streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    /// How long to keep trying to reach NATS at start before giving up.
    pub connect_timeout_secs: u64,
    /// JetStream replicas for the streams this service creates (3 in a production cluster).
    pub stream_replicas: usize,
    /// How long a stream keeps events.
    pub stream_max_age_days: u64,
    /// JetStream de-duplication window; must exceed the outbox relay's longest retry.
    pub duplicate_window_secs: u64,
    /// The service's nkey seed (a file holding `SU…`, mode 0600), for a server whose users log in
    /// with nkeys (`whistle nats-config`, `whistle up`). Without it the service logs in with the
    /// user and password of `url`, or anonymously.
    #[serde(default)]
    pub nkey_seed_file: Option<std::path::PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            connect_timeout_secs: 30,
            stream_replicas: 1,
            stream_max_age_days: 400,
            duplicate_window_secs: 2 * 3600,
            nkey_seed_file: None,
        }
    }
}

impl NatsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for server in self.url.split(',') {
            let server = server.trim();
            let Some((scheme, rest)) = server.split_once("://") else {
                return Err(ConfigError::Invalid(format!(
                    "nats.url must be nats://host:port or tls://host:port (comma-separated for a cluster), got {:?}",
                    redact_url(&self.url)
                )));
            };
            let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(host, _)| host)
                .trim_matches(['[', ']']);
            if !matches!(scheme, "nats" | "tls") || host.is_empty() || host_port.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "nats.url must be nats://host:port or tls://host:port (comma-separated for a cluster), got {:?}",
                    redact_url(server)
                )));
            }
            if let Some((_, port)) = host_port.rsplit_once(':')
                && !host_port.ends_with(']')
                && port.parse::<u16>().is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "nats.url has an invalid port {port:?} in {:?}",
                    redact_url(server)
                )));
            }
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::Invalid(
                "nats.stream_replicas must be between 1 and 5".into(),
            ));
        }
        if self.duplicate_window_secs < 60 {
            return Err(ConfigError::Invalid(
                "nats.duplicate_window_secs must be at least 60".into(),
            ));
        }
        if self.stream_max_age_days == 0 {
            return Err(ConfigError::Invalid(
                "nats.stream_max_age_days must be at least 1".into(),
            ));
        }
        if self.nkey_seed_file.is_some() {
            self.nkey_seed()?;
        }
        Ok(())
    }

    /// The seed in `nats.nkey_seed_file`, checked to be a user seed; `None` when not set.
    pub fn nkey_seed(&self) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.nkey_seed_file else {
            return Ok(None);
        };
        let seed = std::fs::read_to_string(file).map_err(|error| {
            ConfigError::Invalid(format!(
                "nats.nkey_seed_file {}: cannot read it: {error}",
                file.display()
            ))
        })?;
        let seed = seed.trim().to_string();
        if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(&seed).is_err() {
            return Err(ConfigError::Invalid(format!(
                "nats.nkey_seed_file {} holds no nkey user seed (a line starting with SU)",
                file.display()
            )));
        }
        Ok(Some(seed))
    }
}

/// The relay that publishes committed events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Events published per round trip (and acks in flight).
    pub batch_size: u64,
    /// Safety-net poll when no commit woke the relay (other replicas, crash recovery).
    pub poll_interval_ms: u64,
    /// How long sent events stay in the table before they are purged.
    pub retain_sent_secs: u64,
    /// Failed publications of one event (while NATS is reachable) before it is parked, so the
    /// events behind it keep flowing; `whistle outbox list-parked` shows parked events.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval_ms: 1000,
            retain_sent_secs: 3600,
            max_attempts: defaults::max_attempts(),
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(ConfigError::Invalid(
                "outbox.batch_size must be between 1 and 10000".into(),
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "outbox.poll_interval_ms must be at least 1".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "outbox.max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Logs and traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `tracing` filter, overridden by `RUST_LOG`.
    pub log_filter: String,
    /// `text` or `json`.
    pub log_format: String,
    /// `tracing` filter of the spans exported to OpenTelemetry, independent of `log_filter`.
    #[serde(default = "default_trace_filter")]
    pub trace_filter: String,
}

fn default_trace_filter() -> String {
    "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,h2=warn,hyper=warn,tower=warn,async_nats=warn".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info".into(),
            log_format: "text".into(),
            trace_filter: default_trace_filter(),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "telemetry.log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            )));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            return Err(ConfigError::Invalid(format!(
                "telemetry.log_filter {:?} is not a valid filter: {error}",
                self.log_filter
            )));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.trace_filter) {
            return Err(ConfigError::Invalid(format!(
                "telemetry.trace_filter {:?} is not a valid filter: {error}",
                self.trace_filter
            )));
        }
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Sample {
        grpc: GrpcConfig,
        nats: NatsConfig,
    }

    #[test]
    fn file_and_environment_override_defaults() {
        let defaults = Sample {
            grpc: GrpcConfig::on("127.0.0.1:1".parse().expect("address")),
            nats: NatsConfig::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sample.toml");
        std::fs::write(
            &file,
            "[grpc]\nlisten = \"127.0.0.1:2\"\n[nats]\nstream_replicas = 3\n",
        )
        .expect("write");
        let loaded: Sample = load("config-test-file", &defaults, Some(&file)).expect("load");
        assert_eq!(loaded.grpc.listen.port(), 2);
        assert_eq!(loaded.nats.stream_replicas, 3);
        assert_eq!(loaded.nats.url, "nats://127.0.0.1:4222");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let defaults = Sample {
            grpc: GrpcConfig::on("127.0.0.1:1".parse().expect("address")),
            nats: NatsConfig::default(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sample.toml");
        std::fs::write(&file, "[grpc]\nlisen = \"127.0.0.1:2\"\n").expect("write");
        let error = load::<Sample>("config-test-unknown", &defaults, Some(&file))
            .expect_err("typo must fail");
        assert!(error.to_string().contains("lisen"), "{error}");
    }

    #[test]
    fn the_statement_cache_has_a_ceiling() {
        let with = |statement_cache| DatabaseConfig {
            statement_cache,
            ..DatabaseConfig::at("postgres://db/x", 4)
        };
        assert_eq!(
            DatabaseConfig::at("postgres://db/x", 4).statement_cache,
            DEFAULT_STATEMENT_CACHE
        );
        assert!(with(0).validate().is_ok());
        assert!(with(MAX_STATEMENT_CACHE).validate().is_ok());
        let error = with(MAX_STATEMENT_CACHE + 1)
            .validate()
            .expect_err("above the ceiling");
        assert!(
            error.to_string().contains("database.statement_cache"),
            "{error}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://whistle:secret@db:5432/intake"),
            "postgres://whistle:***@db:5432/intake"
        );
        assert_eq!(
            redact_url("sqlite://data/x.sqlite"),
            "sqlite://data/x.sqlite"
        );
    }

    #[test]
    fn nats_urls_need_a_host() {
        let with = |url: &str| NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        };
        assert!(with("nats://127.0.0.1:4222").validate().is_ok());
        assert!(
            with("nats://u:p@nats-0:4222,nats://nats-1")
                .validate()
                .is_ok()
        );
        for bad in [
            "nats://",
            "nats://:4222",
            "http://x:4222",
            "nats://x:port",
            "localhost:4222",
        ] {
            let error = with(bad).validate().expect_err(bad);
            assert!(error.to_string().contains("nats.url"), "{error}");
        }
    }

    #[test]
    fn nkey_seed_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = NatsConfig {
            nkey_seed_file: Some(dir.path().join("absent.nk")),
            ..NatsConfig::default()
        };
        let error = missing.validate().expect_err("missing file");
        assert!(error.to_string().contains("nats.nkey_seed_file"), "{error}");
        let garbage = dir.path().join("garbage.nk");
        std::fs::write(&garbage, "not a seed\n").expect("write");
        let error = NatsConfig {
            nkey_seed_file: Some(garbage),
            ..NatsConfig::default()
        }
        .validate()
        .expect_err("not a seed");
        assert!(error.to_string().contains("no nkey user seed"), "{error}");
        crate::nats_accounts::user_key(dir.path(), "intake").expect("seed");
        let good = NatsConfig {
            nkey_seed_file: Some(crate::nats_accounts::seed_file(dir.path(), "intake")),
            ..NatsConfig::default()
        };
        assert!(good.validate().is_ok());
    }

    #[test]
    fn bad_log_filters_are_refused() {
        let config = TelemetryConfig {
            log_filter: "info,[[".into(),
            ..TelemetryConfig::default()
        };
        let error = config.validate().expect_err("bad filter");
        assert!(
            error.to_string().contains("telemetry.log_filter"),
            "{error}"
        );
    }

    #[test]
    fn env_prefix_uses_underscores() {
        assert_eq!(
            env_prefix("department-gateway"),
            "WHISTLE_DEPARTMENT_GATEWAY"
        );
    }
}
