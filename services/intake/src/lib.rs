//! Intake (受理): turns reports from grid workers, the hotline, residents and volunteers into cases,
//! and publishes `case.reported` through its outbox.

#![forbid(unsafe_code)]

pub mod app;
pub mod catalogue;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod storage;

pub use app::run;
pub use config::IntakeConfig;
