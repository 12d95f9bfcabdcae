use std::process::ExitCode;
use std::sync::Arc;
use whistle_intake::IntakeConfig;
use whistle_platform::{SystemClock, service::service_main};

fn main() -> ExitCode {
    service_main::<IntakeConfig, _, _>("whistle-intake", |config, listener, shutdown| {
        whistle_intake::run(config, listener, Arc::new(SystemClock), shutdown)
    })
}
