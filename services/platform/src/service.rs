//! The shape every service binary shares: arguments -> configuration -> telemetry -> `run`.

use crate::admin::{AdminConfig, AdminListener};
use crate::config::{ConfigError, EXIT_BAD_CONFIG, GrpcConfig, TelemetryConfig};
use crate::grpc::GrpcListener;
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// A service's whole configuration.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// `intake`, `dispatch`, `department-gateway` or `evaluation`.
    const SERVICE: &'static str;
    fn grpc(&self) -> &GrpcConfig;
    fn telemetry(&self) -> &TelemetryConfig;
    /// `[admin]`: the HTTP port of `/metrics`, `/healthz` and `/readyz`.
    fn admin(&self) -> &AdminConfig;
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
#[derive(Debug, Default, clap::Parser)]
#[command(
    version,
    about = "A Whistle service",
    after_help = "Configuration: built-in defaults < the TOML file < WHISTLE_<SERVICE>__<SECTION>__<KEY> environment variables. Exit code 64 means the configuration is wrong; the message names the setting."
)]
pub struct ServiceArgs {
    /// TOML configuration file
    #[arg(long, short = 'c', env = "WHISTLE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Only load and validate the configuration, print it (passwords masked), and exit
    #[arg(long)]
    pub check_config: bool,
}

impl ServiceArgs {
    /// Parses the process arguments; `--help` and `--version` print and exit 0, a wrong argument
    /// prints usage and exits 64.
    pub fn from_env(binary: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().name(binary).bin_name(binary);
        let matches = match command.try_get_matches() {
            Ok(matches) => matches,
            Err(error) => {
                let code = if error.use_stderr() {
                    EXIT_BAD_CONFIG
                } else {
                    0
                };
                let _ = error.print();
                std::process::exit(code);
            }
        };
        match Self::from_arg_matches(&matches) {
            Ok(args) => args,
            Err(error) => {
                let _ = error.print();
                std::process::exit(EXIT_BAD_CONFIG);
            }
        }
    }
}

/// Whether an error that stopped start-up is the configuration's fault (exit 64).
fn is_config_error(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<ConfigError>().is_some())
}

/// Runs a service binary: loads the configuration (exit 64 when it is wrong), starts telemetry,
/// reserves the gRPC port (exit 64 when it is taken) and calls `run` with a shutdown token cancelled
/// by SIGINT/SIGTERM. `run` reports configuration errors it finds later (a NATS server that cannot
/// hold the configured replicas, a catalogue that does not parse) as [`ConfigError`]s, which also
/// exit 64; other failures exit 1.
pub fn service_main<C, F, Fut>(binary: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, GrpcListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = ServiceArgs::from_env(binary);
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
    let listen = config.grpc().listen;
    let listener = match GrpcListener::bind(listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "{binary}: invalid configuration: grpc.listen {listen} cannot be used: {error}"
            );
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let admin_listen = config.admin().listen;
    let admin_listener = match AdminListener::bind(admin_listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "{binary}: invalid configuration: admin.listen {admin_listen} cannot be used: {error:#}"
            );
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
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
        tracing::info!(address = %listener.local_addr(), admin = %admin_listener.local_addr(), "{binary} starting");
        let shutdown = crate::shutdown::cancel_on_signals();
        let admin = tokio::spawn(crate::admin::serve(admin_listener, shutdown.clone()));
        let result = run(config, listener, shutdown.clone()).await;
        shutdown.cancel();
        let _ = admin.await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_config_error(&error) => {
            eprintln!("{binary}: {error:#}");
            ExitCode::from(EXIT_BAD_CONFIG as u8)
        }
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
