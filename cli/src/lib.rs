//! The `whistle` command line: runs the whole platform locally (`whistle up`), plays the demo, and
//! acts as a reporter, a street operator or a department against running services.

#![forbid(unsafe_code)]

pub mod bench;
pub mod client;
pub mod credentials;
pub mod demo;
pub mod evaluation;
pub mod grid;
pub mod local;
pub mod nats_config;
pub mod outbox;
pub mod output;
pub mod tokens;
