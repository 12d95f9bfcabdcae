//! Shared by evaluation's service tests and examples.

pub mod history;
