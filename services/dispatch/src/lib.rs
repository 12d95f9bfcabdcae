//! Dispatch (吹哨): the case state machine, the responsibility catalogue, assignments and their
//! deadlines. It consumes `case.reported`, whistles departments, records their actions and publishes
//! every change as `case.*` and `whistle.*` events through its outbox.

#![forbid(unsafe_code)]

pub mod actions;
pub mod app;
pub mod bounds;
pub mod calendar;
pub mod catalogue;
pub mod config;
pub mod consumer;
pub mod convert;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod policy;
pub mod preload;
pub mod requests;
pub mod scanner;
pub mod service;
pub mod storage;

pub use app::run;
pub use config::DispatchConfig;
