//! The shape every service binary shares: arguments -> configuration -> telemetry -> `run`.

use crate::config::{ConfigError, EXIT_BAD_CONFIG, GrpcConfig, TelemetryConfig};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A service's whole configuration.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// `intake`, `dispatch`, `department-gateway` or `evaluation`.
    const SERVICE: &'static str;
    fn grpc(&self) -> &GrpcConfig;
    fn telemetry(&self) -> &TelemetryConfig;
    /// Refuses values that would fail later, naming the setting.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Defaults < file < environment, then [`ServiceConfig::validate`].
    fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Self = crate::config::load(Self::SERVICE, &Self::default(), file)?;
        config.validate()?;
        Ok(config)
    }
}

/// Command-line arguments of every service binary.
#[derive(Debug, Default)]
pub struct ServiceArgs {
    /// TOML configuration file (also `WHISTLE_CONFIG`).
    pub config: Option<PathBuf>,
    /// Only load and validate the configuration, print it, and exit.
    pub check_config: bool,
}

impl ServiceArgs {
    /// Parses `--config <file>` and `--check-config`; `--help` prints usage.
    pub fn from_env(binary: &str) -> Result<Self, String> {
        let mut parsed = ServiceArgs {
            config: std::env::var_os("WHISTLE_CONFIG").map(PathBuf::from),
            check_config: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" | "-c" => {
                    let file = args.next().ok_or("--config needs a file")?;
                    parsed.config = Some(PathBuf::from(file));
                }
                "--check-config" => parsed.check_config = true,
                "--help" | "-h" => {
                    return Err(format!(
                        "usage: {binary} [--config <file.toml>] [--check-config]\n\
                         configuration: built-in defaults < file < WHISTLE_<SERVICE>__<SECTION>__<KEY> environment variables"
                    ));
                }
                other => return Err(format!("unknown argument {other:?}; try --help")),
            }
        }
        Ok(parsed)
    }
}

/// Runs a service binary: loads the configuration (exit 64 when it is wrong), starts telemetry,
/// binds the gRPC listener and calls `run` with a shutdown token cancelled by SIGINT/SIGTERM.
pub fn service_main<C, F, Fut>(binary: &str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = match ServiceArgs::from_env(binary) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let config = match C::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{binary}: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    if args.check_config {
        match redacted_json(&config) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("{binary}: {error}"),
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let _telemetry = crate::telemetry::init(binary, config.telemetry())?;
        let listener = crate::grpc::bind(config.grpc().listen).await?;
        tracing::info!(address = %listener.local_addr()?, "{binary} listening");
        let shutdown = crate::shutdown::cancel_on_signals();
        run(config, listener, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration as JSON, with passwords in URLs masked.
fn redacted_json<C: Serialize>(config: &C) -> Result<String, serde_json::Error> {
    fn redact(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) if text.contains("://") => {
                *text = text
                    .split(',')
                    .map(crate::config::redact_url)
                    .collect::<Vec<_>>()
                    .join(",");
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(redact),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(config)?;
    redact(&mut value);
    serde_json::to_string_pretty(&value)
}

#[cfg(test)]
mod tests {
    use super::redacted_json;

    #[test]
    fn printed_configuration_hides_passwords() {
        let config = serde_json::json!({
            "database": { "url": "postgres://whistle:hunter2@db/whistle_intake" },
            "nats": { "url": "nats://intake:s3cret@nats-0:4222,nats://intake:s3cret@nats-1:4222" },
        });
        let printed = redacted_json(&config).expect("json");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(
            printed.contains("postgres://whistle:***@db/whistle_intake"),
            "{printed}"
        );
    }
}
