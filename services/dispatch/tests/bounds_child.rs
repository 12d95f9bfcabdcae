//! The start-up limits check of the dispatch binary plays the largest case in a child process
//! (`bounds::checked_event_sizes`): the child answers the sizes a play in this process finds, and a
//! limits table whose largest event is too large still refuses to start, naming the setting.

use std::path::PathBuf;
use std::process::Command;
use whistle_dispatch::bounds;
use whistle_platform::validation::LimitsConfig;

const BINARY: &str = env!("CARGO_BIN_EXE_whistle-dispatch");

#[test]
fn the_child_answers_the_sizes_a_play_in_this_process_finds() {
    // a smaller table than the default, so the child must have been handed this one
    let limits = LimitsConfig {
        evidence_per_assignment: 20,
        ..LimitsConfig::default()
    };
    let here = bounds::largest_event_sizes(&limits).expect("plays here");
    let default_sizes = bounds::largest_event_sizes(&LimitsConfig::default()).expect("plays");
    assert_ne!(here, default_sizes, "the table changes the sizes");

    bounds::play_in_child_process(PathBuf::from(BINARY));
    let from_child = bounds::checked_event_sizes(&limits).expect("the child answers");
    assert_eq!(from_child, here);
    assert!(
        from_child.contains_key("whistle.resolved"),
        "{from_child:?}"
    );
}

#[test]
fn the_binary_refuses_limits_whose_largest_event_is_too_large() {
    let output = Command::new(BINARY)
        .arg("--check-config")
        .env("WHISTLE_DISPATCH__LIMITS__MAX_EVENT_BYTES", "20000")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("more than limits.max_event_bytes = 20000"),
        "{stderr}"
    );

    let output = Command::new(BINARY)
        .arg("--check-config")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "the default table fits: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_child_given_no_limits_fails_loudly() {
    let output = Command::new(BINARY)
        .arg(bounds::SIZES_ARGUMENT)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unreadable limits"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
