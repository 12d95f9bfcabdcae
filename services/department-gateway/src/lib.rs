//! Department gateway (报到): authenticates department systems, streams the whistles addressed to
//! each department in order and resumably, and forwards their actions to dispatch.

#![forbid(unsafe_code)]

pub mod actions;
pub mod app;
pub mod catalogue;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod error;
pub mod forwarding;
pub mod grpc;
pub mod notices;
pub mod policy;
pub mod preload;
pub mod slots;
pub mod storage;
pub mod subscription;

pub use app::run;
pub use config::GatewayConfig;
pub use credentials::issue_missing_credentials;
