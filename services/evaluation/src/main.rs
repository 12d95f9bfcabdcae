use std::process::ExitCode;
use std::sync::Arc;
use whistle_evaluation::EvaluationConfig;
use whistle_platform::{SystemClock, service::service_main};

fn main() -> ExitCode {
    service_main::<EvaluationConfig, _, _>("whistle-evaluation", |config, listener, shutdown| {
        whistle_evaluation::run(config, listener, Arc::new(SystemClock), shutdown)
    })
}
