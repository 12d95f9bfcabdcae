//! Evaluation's rules (考核评价): periods, the facts kept per assignment, and every indicator, count
//! and composite of a scorecard, and rankings (see DOMAIN.md, "Evaluation"). Pure: no I/O, no
//! gRPC, no database. Timestamps are epoch milliseconds.

mod closing;
mod facts;
mod parsing;
mod periods;
mod rankings;
mod scorecards;
mod tallies;

pub use closing::*;
pub use facts::*;
pub use parsing::*;
pub use periods::*;
pub use rankings::*;
pub use scorecards::*;
pub use tallies::*;

#[cfg(test)]
mod tests;
