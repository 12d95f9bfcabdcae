use std::process::ExitCode;
use std::sync::Arc;
use whistle_dispatch::DispatchConfig;
use whistle_dispatch::bounds;
use whistle_platform::{SystemClock, service::service_main};

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|argument| argument == bounds::SIZES_ARGUMENT)
    {
        // a child of the start-up check (`bounds::checked_event_sizes`)
        return match bounds::answer_sizes(std::io::stdin().lock(), std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("whistle-dispatch {}: {error}", bounds::SIZES_ARGUMENT);
                ExitCode::FAILURE
            }
        };
    }
    // the limits check plays the largest case in a child process, whose heap then never counts
    // against the service's memory; without a path to this binary it plays here
    if let Ok(executable) = std::env::current_exe() {
        bounds::play_in_child_process(executable);
    }
    service_main::<DispatchConfig, _, _>("whistle-dispatch", |config, listener, shutdown| {
        whistle_dispatch::run(config, listener, Arc::new(SystemClock), shutdown)
    })
}
