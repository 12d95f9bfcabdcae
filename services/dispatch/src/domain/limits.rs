//! Time limits: the severity's defaults (DOMAIN.md), and what a route or an operator overrides.

use super::clock::ClockKind;
use chrono::Duration;
use serde::{Deserialize, Serialize};

/// How urgent a case is; chooses the default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Routine,
    Urgent,
    Emergency,
    Complex,
}

/// The limits of an assignment's three clocks, counted from the whistle, and each clock's second
/// interval: how long after a missed deadline the case escalates (`None`: half the clock's limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub acknowledge_within: Duration,
    pub on_site_within: Duration,
    pub resolve_within: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_escalate_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_site_escalate_after: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_escalate_after: Option<Duration>,
}

impl Limits {
    /// The limit of one clock.
    pub fn within(&self, kind: ClockKind) -> Duration {
        match kind {
            ClockKind::Acknowledge => self.acknowledge_within,
            ClockKind::OnSite => self.on_site_within,
            ClockKind::Resolve => self.resolve_within,
        }
    }

    /// How long after one clock's missed deadline the case escalates: as set, else half the limit.
    pub fn escalate_after(&self, kind: ClockKind) -> Duration {
        let set = match kind {
            ClockKind::Acknowledge => self.acknowledge_escalate_after,
            ClockKind::OnSite => self.on_site_escalate_after,
            ClockKind::Resolve => self.resolve_escalate_after,
        };
        set.unwrap_or_else(|| self.within(kind) / 2)
    }
}

impl Severity {
    /// DOMAIN.md's defaults (Pinggu's 30-minute arrival rule, Beijing 12345's feedback limits).
    pub fn default_limits(self) -> Limits {
        let (acknowledge, on_site, resolve) = match self {
            Severity::Emergency => (
                Duration::minutes(15),
                Duration::minutes(30),
                Duration::hours(2),
            ),
            Severity::Urgent => (
                Duration::minutes(30),
                Duration::hours(2),
                Duration::hours(24),
            ),
            Severity::Routine => (Duration::hours(2), Duration::hours(24), Duration::days(7)),
            Severity::Complex => (Duration::hours(2), Duration::hours(24), Duration::days(15)),
        };
        Limits {
            acknowledge_within: acknowledge,
            on_site_within: on_site,
            resolve_within: resolve,
            acknowledge_escalate_after: None,
            on_site_escalate_after: None,
            resolve_escalate_after: None,
        }
    }
}

/// Limits a route or an operator sets; unset ones fall back to the severity's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub acknowledge_within: Option<Duration>,
    pub on_site_within: Option<Duration>,
    pub resolve_within: Option<Duration>,
    #[serde(default)]
    pub acknowledge_escalate_after: Option<Duration>,
    #[serde(default)]
    pub on_site_escalate_after: Option<Duration>,
    #[serde(default)]
    pub resolve_escalate_after: Option<Duration>,
}

/// The longest limit or second interval.
pub const LONGEST_LIMIT_DAYS: i64 = 366;

impl LimitOverrides {
    /// These overrides over `base`.
    pub fn apply(&self, base: Limits) -> Limits {
        Limits {
            acknowledge_within: self.acknowledge_within.unwrap_or(base.acknowledge_within),
            on_site_within: self.on_site_within.unwrap_or(base.on_site_within),
            resolve_within: self.resolve_within.unwrap_or(base.resolve_within),
            acknowledge_escalate_after: self
                .acknowledge_escalate_after
                .or(base.acknowledge_escalate_after),
            on_site_escalate_after: self.on_site_escalate_after.or(base.on_site_escalate_after),
            resolve_escalate_after: self.resolve_escalate_after.or(base.resolve_escalate_after),
        }
    }

    /// `self` where set, else `fallback`.
    pub fn or(&self, fallback: &LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            acknowledge_within: self.acknowledge_within.or(fallback.acknowledge_within),
            on_site_within: self.on_site_within.or(fallback.on_site_within),
            resolve_within: self.resolve_within.or(fallback.resolve_within),
            acknowledge_escalate_after: self
                .acknowledge_escalate_after
                .or(fallback.acknowledge_escalate_after),
            on_site_escalate_after: self
                .on_site_escalate_after
                .or(fallback.on_site_escalate_after),
            resolve_escalate_after: self
                .resolve_escalate_after
                .or(fallback.resolve_escalate_after),
        }
    }

    /// Every set limit must be positive and at most a year; there is no minimum, so a demo or a
    /// test can watch clocks of a few seconds fire.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (name, value) in [
            ("acknowledge_within", self.acknowledge_within),
            ("on_site_within", self.on_site_within),
            ("resolve_within", self.resolve_within),
            (
                "acknowledge_escalate_after",
                self.acknowledge_escalate_after,
            ),
            ("on_site_escalate_after", self.on_site_escalate_after),
            ("resolve_escalate_after", self.resolve_escalate_after),
        ] {
            if let Some(value) = value
                && (value <= Duration::zero() || value > Duration::days(LONGEST_LIMIT_DAYS))
            {
                return Err((name, "must be positive and at most 366 days".into()));
            }
        }
        Ok(())
    }
}
