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

    /// Whether a clock of `limit` counts working time (only under a working-hour calendar, and
    /// only for limits of a day or more); such a clock keeps working time when it is paused.
    fn counts_working_time(&self, _limit: Duration) -> bool {
        false
    }

    /// The working time from `from` to `to`; asked only for clocks that count working time.
    fn working_time_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        to - from
    }

    /// The instant `working_time` of working time after `start`.
    fn add_working_time(&self, start: DateTime<Utc>, working_time: Duration) -> DateTime<Utc> {
        start
            .checked_add_signed(working_time)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Deadlines under a working-hour calendar ([`crate::calendar`]): limits of a day or more count
/// its working days (工作日: work days and hours, public holidays, make-up work days), shorter
/// limits and the escalation interval of short clocks count calendar time (DOMAIN.md).
#[derive(Debug, Clone)]
pub struct WorkingHours(crate::calendar::CalendarTime);

impl WorkingHours {
    pub fn new(calendar: crate::calendar::Calendar) -> Self {
        Self(crate::calendar::CalendarTime::new(calendar))
    }
}

impl DeadlinePolicy for WorkingHours {
    fn due_at(&self, start: DateTime<Utc>, limit: Duration) -> DateTime<Utc> {
        crate::calendar::Deadlines::due_at(&self.0, start, limit)
    }

    fn counts_working_time(&self, limit: Duration) -> bool {
        crate::calendar::counts_working_time(limit)
    }

    fn working_time_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        self.0.calendar().working_time_between(from, to)
    }

    fn add_working_time(&self, start: DateTime<Utc>, working_time: Duration) -> DateTime<Utc> {
        self.0.calendar().add_working_time(start, working_time)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::{ClockKind, DeadlineClock};

    fn shipped_calendar() -> WorkingHours {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/demo/calendar-2026.json");
        WorkingHours::new(crate::calendar::Calendar::load(&file).expect("the shipped calendar"))
    }

    /// China time (+08:00) on a date of November 2026.
    fn beijing(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        chrono::FixedOffset::east_opt(8 * 3600)
            .expect("offset")
            .with_ymd_and_hms(2026, 11, day, hour, minute, 0)
            .single()
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_day_counts_one_working_day_and_short_limits_count_calendar_time() {
        let policy = shipped_calendar();
        // Friday 27 November 15:00 + 1 day: the weekend does not count, Monday 15:00
        assert_eq!(
            policy.due_at(beijing(27, 15, 0), Duration::days(1)),
            beijing(30, 15, 0)
        );
        // two hours stay two hours, also over the weekend
        assert_eq!(
            policy.due_at(beijing(27, 23, 0), Duration::hours(2)),
            beijing(28, 1, 0)
        );
        assert_eq!(
            CalendarTime.due_at(beijing(27, 15, 0), Duration::days(1)),
            beijing(28, 15, 0)
        );
    }

    #[test]
    fn a_deferred_working_day_clock_keeps_its_working_time() {
        let policy = shipped_calendar();
        let mut clock = DeadlineClock::start(
            ClockKind::Resolve,
            beijing(27, 15, 0),
            Duration::days(1),
            Duration::hours(12),
            &policy,
        );
        assert!(clock.counts_working_time);
        assert_eq!(clock.due_at, beijing(30, 15, 0));
        // deferred on Friday at 17:00: 1 h of Friday and 4 h 30 of Monday were left
        clock.pause(beijing(27, 17, 0), &policy);
        // resumed on Monday at 09:00: 09:00–12:00 and 13:30–16:00
        clock.resume(beijing(30, 9, 0), &policy);
        assert_eq!(clock.due_at, beijing(30, 16, 0));
    }
}
