//! Shared by evaluation's service tests and examples.

pub mod batches;
pub mod history;
