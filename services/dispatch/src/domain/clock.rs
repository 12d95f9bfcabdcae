//! One running clock of an assignment (报到, 到场, 办结) and the two steps it fires when its
//! deadline passes unmet: overdue at the deadline, escalation a second interval later. Each step
//! fires at most once per clock; a clock that is met, stopped or paused fires nothing.

use super::assignment::Flag;
use super::deadline::DeadlinePolicy;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Which clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClockKind {
    Acknowledge,
    OnSite,
    Resolve,
}

impl ClockKind {
    pub const ALL: [ClockKind; 3] = [
        ClockKind::Acknowledge,
        ClockKind::OnSite,
        ClockKind::Resolve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClockKind::Acknowledge => "acknowledge",
            ClockKind::OnSite => "on_site",
            ClockKind::Resolve => "resolve",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }

    /// The flag an assignment gets when this clock goes overdue.
    pub fn overdue_flag(self) -> Flag {
        match self {
            ClockKind::Acknowledge => Flag::AckOverdue,
            ClockKind::OnSite => Flag::ArrivalOverdue,
            ClockKind::Resolve => Flag::ResolveOverdue,
        }
    }

    /// The duty the clock times, as the street says it.
    pub fn duty(self) -> &'static str {
        match self {
            ClockKind::Acknowledge => "报到",
            ClockKind::OnSite => "到场",
            ClockKind::Resolve => "办结",
        }
    }
}

/// Whether a clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClockState {
    Running,
    /// Stopped by a deferral (缓办) with this much left until the deadline (negative when the
    /// deadline had passed).
    Paused {
        remaining: Duration,
        /// `remaining` is working time of the calendar (the clock counts working time).
        #[serde(default)]
        working_time: bool,
    },
    /// The duty was done.
    Met {
        at: DateTime<Utc>,
    },
    /// The clock no longer counts: the assignment was returned, or the clock was replaced (an
    /// approved extension, rework, a rejected return).
    Stopped {
        at: DateTime<Utc>,
    },
}

/// A step a clock fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClockStep {
    Overdue,
    Escalation,
}

impl ClockStep {
    pub fn as_str(self) -> &'static str {
        match self {
            ClockStep::Overdue => "overdue",
            ClockStep::Escalation => "escalation",
        }
    }
}

/// One clock: its deadline, its escalation time and what it has fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineClock {
    pub kind: ClockKind,
    pub started_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    /// The second interval, from the deadline to escalation.
    pub escalate_after: Duration,
    pub escalate_at: DateTime<Utc>,
    pub state: ClockState,
    /// When the overdue step fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_at: Option<DateTime<Utc>>,
    /// When the escalation step fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<DateTime<Utc>>,
    /// The department asked for more time on this clock (at most once per clock).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extension_requested: bool,
    /// The clock counts working time (a limit of a day or more under a working-hour calendar), so
    /// a deferral keeps the working time it had left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counts_working_time: bool,
}

impl DeadlineClock {
    /// A clock started at `at` with `within` to its deadline.
    pub fn start(
        kind: ClockKind,
        at: DateTime<Utc>,
        within: Duration,
        escalate_after: Duration,
        policy: &dyn DeadlinePolicy,
    ) -> Self {
        let due_at = policy.due_at(at, within);
        Self {
            kind,
            started_at: at,
            due_at,
            escalate_after,
            escalate_at: policy.due_at(due_at, escalate_after),
            state: ClockState::Running,
            overdue_at: None,
            escalated_at: None,
            extension_requested: false,
            counts_working_time: policy.counts_working_time(within),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == ClockState::Running
    }

    /// The next step this clock will fire and when, if it runs and has one left.
    pub fn next_step(&self) -> Option<(ClockStep, DateTime<Utc>)> {
        if !self.is_running() {
            return None;
        }
        match (self.overdue_at, self.escalated_at) {
            (None, _) => Some((ClockStep::Overdue, self.due_at)),
            (Some(_), None) => Some((ClockStep::Escalation, self.escalate_at)),
            (Some(_), Some(_)) => None,
        }
    }

    /// Fires the next step when it is due at `now`; returns it.
    pub fn fire(&mut self, now: DateTime<Utc>) -> Option<ClockStep> {
        let (step, due) = self.next_step()?;
        if due > now {
            return None;
        }
        match step {
            ClockStep::Overdue => self.overdue_at = Some(now),
            ClockStep::Escalation => self.escalated_at = Some(now),
        }
        Some(step)
    }

    /// Running and past its deadline, with the overdue step fired.
    pub fn is_overdue(&self) -> bool {
        self.is_running() && self.overdue_at.is_some()
    }

    /// The duty was done: the clock stops for good.
    pub fn meet(&mut self, at: DateTime<Utc>) {
        if self.is_running() || matches!(self.state, ClockState::Paused { .. }) {
            self.state = ClockState::Met { at };
        }
    }

    /// The clock no longer counts.
    pub fn stop(&mut self, at: DateTime<Utc>) {
        if self.is_running() || matches!(self.state, ClockState::Paused { .. }) {
            self.state = ClockState::Stopped { at };
        }
    }

    /// Stops the clock with the time it has left (缓办): working time when it counts working time
    /// and its deadline is ahead, calendar time otherwise.
    pub fn pause(&mut self, now: DateTime<Utc>, policy: &dyn DeadlinePolicy) {
        if self.is_running() {
            let working_time = self.counts_working_time && now < self.due_at;
            let remaining = if working_time {
                policy.working_time_between(now, self.due_at)
            } else {
                self.due_at - now
            };
            self.state = ClockState::Paused {
                remaining,
                working_time,
            };
        }
    }

    /// Continues a paused clock from `now` with the time it had left; its escalation time moves
    /// with its deadline.
    pub fn resume(&mut self, now: DateTime<Utc>, policy: &dyn DeadlinePolicy) {
        let ClockState::Paused {
            remaining,
            working_time,
        } = self.state
        else {
            return;
        };
        self.due_at = if working_time {
            policy.add_working_time(now, remaining)
        } else {
            now + remaining
        };
        self.escalate_at = policy.due_at(self.due_at, self.escalate_after);
        self.state = ClockState::Running;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::deadline::CalendarTime;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_763_000_000, 0).expect("time") + Duration::minutes(minutes)
    }

    #[test]
    fn a_clock_fires_overdue_at_its_deadline_and_escalation_after_the_second_interval() {
        let mut clock = DeadlineClock::start(
            ClockKind::Acknowledge,
            at(0),
            Duration::minutes(30),
            Duration::minutes(15),
            &CalendarTime,
        );
        assert_eq!(clock.next_step(), Some((ClockStep::Overdue, at(30))));
        assert_eq!(clock.fire(at(29)), None);
        assert_eq!(clock.fire(at(30)), Some(ClockStep::Overdue));
        assert_eq!(clock.fire(at(30)), None, "once");
        assert_eq!(clock.next_step(), Some((ClockStep::Escalation, at(45))));
        assert_eq!(clock.fire(at(50)), Some(ClockStep::Escalation));
        assert_eq!(clock.fire(at(500)), None);
        assert_eq!(clock.next_step(), None);
    }

    #[test]
    fn a_paused_clock_continues_with_the_time_it_had_left() {
        let mut clock = DeadlineClock::start(
            ClockKind::Resolve,
            at(0),
            Duration::minutes(60),
            Duration::minutes(30),
            &CalendarTime,
        );
        clock.pause(at(20), &CalendarTime);
        assert_eq!(clock.next_step(), None);
        assert_eq!(clock.fire(at(1000)), None, "a paused clock never fires");
        clock.resume(at(200), &CalendarTime);
        assert_eq!(clock.due_at, at(240));
        assert_eq!(clock.escalate_at, at(270));
        clock.meet(at(230));
        assert_eq!(clock.fire(at(1000)), None, "a met clock never fires");
    }
}
