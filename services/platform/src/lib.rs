//! Runtime plumbing shared by every Whistle service: configuration, telemetry, shutdown, gRPC serving,
//! database connection and migrations, the transactional outbox, the idempotent inbox, event envelopes
//! and the clock. Domain types, entities of a service and business rules never live here (see README.md).

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod envelope;
pub mod errors;
pub mod grpc;
pub mod inbox;
pub mod local_nats;
pub mod metrics;
pub mod nats;
pub mod nats_accounts;
pub mod outbox;
pub mod provenance;
pub mod rate_limit;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validation;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
