//! Dispatch's rules: routing through the responsibility catalogue, time limits and the clocks that
//! enforce them, the department registry, and the case aggregate (a case and its assignments:
//! commands in, events out). Pure: no I/O, no gRPC, no database.

pub mod assignment;
pub mod case;
pub mod clock;
pub mod deadline;
pub mod limits;
pub mod registry;
pub mod routing;

pub use assignment::{
    Assignment, AssignmentStatus, CheckInError, Decision, Evidence, Extension, Firing, Flag,
    ProgressError, Role, TransitionError, WhistleTarget,
};
pub use case::{
    ActionRules, AssignmentClocks, Case, CaseError, CaseEvent, CaseReport, CaseStatus, Command,
    Deferral, DepartmentAction, Emitted, Fallback, SYSTEM, Verdict,
};
pub use clock::{ClockKind, ClockState, ClockStep, DeadlineClock};
pub use deadline::{CalendarTime, DeadlinePolicy, WorkingHours};
pub use limits::{LimitOverrides, Limits, Severity};
pub use registry::{Department, FallbackOwner, fallback_owner_for, supervisor_of};
pub use routing::{Route, check_department_code, select_route};

/// Geodesic distance on the WGS-84 ellipsoid, in meters.
pub fn distance_meters(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    use geographiclib_rs::{Geodesic, InverseGeodesic};
    let distance: f64 = Geodesic::wgs84().inverse(lat1, lng1, lat2, lng2);
    distance
}

#[cfg(test)]
mod tests;
