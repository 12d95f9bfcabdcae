use std::process::ExitCode;
use std::sync::Arc;
use whistle_department_gateway::GatewayConfig;
use whistle_platform::{SystemClock, service::service_main};

fn main() -> ExitCode {
    service_main::<GatewayConfig, _, _>(
        "whistle-department-gateway",
        |config, listener, shutdown| {
            whistle_department_gateway::run(config, listener, Arc::new(SystemClock), shutdown)
        },
    )
}
