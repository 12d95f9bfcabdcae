//! Where every deadline is computed: the seam for a working-hour calendar. Dispatch counts calendar
//! time ([`CalendarTime`]); a calendar that counts working hours, public holidays and their make-up
//! days (调休) implements [`DeadlinePolicy`] and is passed in instead, with no other change.

use chrono::{DateTime, Duration, Utc};

/// Turns a limit that starts counting at `start` into its deadline. Every deadline of a clock goes
/// through here: the whistle (each clock's limit), escalation (the second interval after the
/// deadline), an approved extension (the extra time after the current deadline) and a resumed
/// deferral (the time a clock had left, from the resumption).
pub trait DeadlinePolicy: Send + Sync + std::fmt::Debug {
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc>;
}

/// Limits count calendar time: the deadline is `start + limit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CalendarTime;

impl DeadlinePolicy for CalendarTime {
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc> {
        start
            .checked_add_signed(limit)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}
