//! Evaluation (考核): keeps per-assignment facts from the case and whistle events, takes
//! cooperation ratings and resident call-backs, and serves scorecards, rankings and explanations.

#![forbid(unsafe_code)]

pub mod app;
pub mod cards;
pub mod case_batch;
pub mod catalogue;
pub mod cells;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod policy;
pub mod preload;
pub mod rebuild;
pub mod storage;

pub use app::run;
pub use config::EvaluationConfig;
