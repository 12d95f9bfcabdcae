use std::process::ExitCode;
use std::sync::Arc;
use whistle_dispatch::DispatchConfig;
use whistle_platform::{SystemClock, service::service_main};

fn main() -> ExitCode {
    service_main::<DispatchConfig, _, _>("whistle-dispatch", |config, listener, shutdown| {
        whistle_dispatch::run(config, listener, Arc::new(SystemClock), shutdown)
    })
}
