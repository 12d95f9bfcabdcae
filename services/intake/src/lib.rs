//! Intake (受理): turns reports from grid workers, the hotline, residents, volunteers and Open311
//! clients into cases (finding the grid of a position, merging duplicates, flagging recurring
//! problems), and publishes `case.reported` / `case.merged` through its outbox.

#![forbid(unsafe_code)]

pub mod app;
pub mod catalogue;
pub mod config;
pub mod domain;
pub mod error;
pub mod geometry;
pub mod grpc;
pub mod lifecycle;
pub mod merging;
pub mod metrics;
pub mod open311;
pub mod policy;
pub mod preload;
pub mod requests;
pub mod service;
pub mod storage;

pub use app::{run, run_with_open311};
pub use config::IntakeConfig;
