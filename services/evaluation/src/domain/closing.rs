//! Closing a period: the frozen card of each department, their canonical serialisation and its
//! SHA-256, and who may rate whom.

use super::scorecards::{Counts, Indicators, Rater, ScorecardFigures};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One department's final figures for a closed period, in the field order of the canonical
/// serialisation (docs/evaluation.md, "Verifying a closed period").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrozenCard {
    pub department_code: String,
    pub period: String,
    pub rated: bool,
    pub composite: Option<f64>,
    pub counts: FrozenCounts,
    pub indicators: FrozenIndicators,
    pub scoring_config: String,
}

/// The counts of a frozen card, named as on the gRPC `ScorecardCounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenCounts {
    pub whistled: u64,
    pub acknowledged: u64,
    pub acknowledged_within_limit: u64,
    pub required_on_site: u64,
    pub on_site_within_limit: u64,
    pub resolved: u64,
    pub resolved_within_limit: u64,
    pub verified: u64,
    pub returned: u64,
    pub returns_accepted: u64,
    pub returns_rejected: u64,
    pub deferred: u64,
    pub reopened: u64,
    pub due_in_period: u64,
    pub overdue: u64,
    pub escalated: u64,
    pub cooperation_ratings: u64,
    pub satisfaction_callbacks: u64,
}

/// The indicators of a frozen card; `null` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrozenIndicators {
    pub report_rate: Option<f64>,
    pub on_site_rate: Option<f64>,
    pub resolution_rate: Option<f64>,
    pub on_time_rate: Option<f64>,
    pub rework_rate: Option<f64>,
    pub cooperation: Option<f64>,
    pub satisfaction: Option<f64>,
}

impl FrozenCard {
    pub fn new(
        department_code: &str,
        period: &str,
        figures: &ScorecardFigures,
        scoring_config: &str,
    ) -> Self {
        let Counts {
            whistled,
            acknowledged,
            acknowledged_within_limit,
            required_on_site,
            on_site_within_limit,
            resolved,
            resolved_within_limit,
            verified,
            returned,
            returns_accepted,
            deferred,
            reopened,
            due_in_period,
            cooperation_ratings,
            satisfaction_callbacks,
            returns_rejected,
            overdue,
            escalated,
        } = figures.counts;
        let Indicators {
            report_rate,
            on_site_rate,
            resolution_rate,
            on_time_rate,
            rework_rate,
            cooperation,
            satisfaction,
        } = figures.indicators;
        Self {
            department_code: department_code.to_string(),
            period: period.to_string(),
            rated: figures.rated,
            composite: figures.composite,
            counts: FrozenCounts {
                whistled,
                acknowledged,
                acknowledged_within_limit,
                required_on_site,
                on_site_within_limit,
                resolved,
                resolved_within_limit,
                verified,
                returned,
                returns_accepted,
                returns_rejected,
                deferred,
                reopened,
                due_in_period,
                overdue,
                escalated,
                cooperation_ratings,
                satisfaction_callbacks,
            },
            indicators: FrozenIndicators {
                report_rate,
                on_site_rate,
                resolution_rate,
                on_time_rate,
                rework_rate,
                cooperation,
                satisfaction,
            },
            scoring_config: scoring_config.to_string(),
        }
    }
}

/// The canonical serialisation of a period's frozen cards: a compact JSON array (no whitespace),
/// ordered by department code, each object's keys in the order of [`FrozenCard`], numbers in
/// their shortest round-trip form, absent indicators as `null`, UTF-8.
pub fn canonical_json(cards: &[FrozenCard]) -> String {
    let mut ordered: Vec<&FrozenCard> = cards.iter().collect();
    ordered.sort_by(|left, right| left.department_code.cmp(&right.department_code));
    // serialising plain structs of strings, numbers and options cannot fail
    serde_json::to_string(&ordered).unwrap_or_default()
}

/// Lowercase hex SHA-256 of `text`'s UTF-8 bytes.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Reads back a published canonical serialisation.
pub fn parse_frozen_cards(json: &str) -> Result<Vec<FrozenCard>, String> {
    serde_json::from_str(json).map_err(|error| format!("frozen cards are malformed: {error}"))
}

/// Where a case is: its street and community division codes, as the events' region names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseRegion {
    pub street_code: String,
    pub community_code: String,
}

impl CaseRegion {
    /// Whether the case lies in `region_code` (a division code prefix: district, street or
    /// community).
    pub fn lies_in(&self, region_code: &str) -> bool {
        let innermost = if self.community_code.is_empty() {
            &self.street_code
        } else {
            &self.community_code
        };
        !innermost.is_empty() && innermost.starts_with(region_code)
    }
}

/// Who scores whom: the street that whistled the case rates as `Street` with its street code, the
/// community the case is in as `Community` with its community code; nobody else.
pub fn may_rate(rater: Rater, rater_id: &str, case: &CaseRegion) -> Result<(), String> {
    let (expected, what) = match rater {
        Rater::Street => (&case.street_code, "street"),
        Rater::Community => (&case.community_code, "community"),
    };
    if expected.is_empty() {
        return Err(format!("the case's {what} is not known yet"));
    }
    if expected != rater_id {
        return Err(format!(
            "only the case's {what} {expected} may rate as {what}, not {rater_id}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(department_code: &str, composite: Option<f64>) -> FrozenCard {
        FrozenCard {
            department_code: department_code.into(),
            period: "2026-11".into(),
            rated: composite.is_some(),
            composite,
            counts: FrozenCounts {
                whistled: 2,
                acknowledged: 2,
                acknowledged_within_limit: 1,
                required_on_site: 0,
                on_site_within_limit: 0,
                resolved: 1,
                resolved_within_limit: 1,
                verified: 1,
                returned: 0,
                returns_accepted: 0,
                returns_rejected: 0,
                deferred: 0,
                reopened: 0,
                due_in_period: 1,
                overdue: 0,
                escalated: 0,
                cooperation_ratings: 0,
                satisfaction_callbacks: 0,
            },
            indicators: FrozenIndicators {
                report_rate: Some(0.5),
                on_site_rate: None,
                resolution_rate: Some(0.5),
                on_time_rate: Some(1.0),
                rework_rate: Some(0.0),
                cooperation: None,
                satisfaction: None,
            },
            scoring_config: "scoring-0123456789abcdef".into(),
        }
    }

    #[test]
    fn the_canonical_form_is_ordered_compact_and_round_trips() {
        let cards = vec![card("zw-water", None), card("zw-enforcement", Some(81.25))];
        let json = canonical_json(&cards);
        assert!(json.starts_with(r#"[{"department_code":"zw-enforcement","period":"2026-11","rated":true,"composite":81.25,"counts":{"whistled":2,"#), "{json}");
        assert!(json.contains(r#""on_site_rate":null"#));
        assert!(!json.contains(' '));
        assert_eq!(canonical_json(&[cards[1].clone(), cards[0].clone()]), json);
        let parsed = parse_frozen_cards(&json).expect("parses");
        assert_eq!(canonical_json(&parsed), json);
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(sha256_hex(&json), sha256_hex(&canonical_json(&cards[..1])));
    }

    #[test]
    fn only_the_case_street_and_community_may_rate() {
        let case = CaseRegion {
            street_code: "420303003".into(),
            community_code: "420303003001".into(),
        };
        assert!(may_rate(Rater::Street, "420303003", &case).is_ok());
        assert!(may_rate(Rater::Community, "420303003001", &case).is_ok());
        assert!(may_rate(Rater::Street, "420303004", &case).is_err());
        assert!(may_rate(Rater::Community, "420303003002", &case).is_err());
        // a community may not rate as the street, nor the street as the community
        assert!(may_rate(Rater::Street, "420303003001", &case).is_err());
        assert!(may_rate(Rater::Community, "420303003", &case).is_err());
        assert!(may_rate(Rater::Street, "420303003", &CaseRegion::default()).is_err());
        assert!(
            case.lies_in("420303003") && case.lies_in("420303003001") && case.lies_in("420303")
        );
        assert!(!case.lies_in("420303003002"));
    }

    #[test]
    fn the_latest_month_ended_is_found_in_local_time() {
        use crate::domain::{Period, UtcOffset, latest_month_ended_before};
        let beijing = UtcOffset::from_hours(8).expect("offset");
        let november = Period::Month {
            year: 2026,
            month: 11,
        };
        let december_start = Period::Month {
            year: 2026,
            month: 12,
        }
        .bounds(beijing)
        .start_ms;
        // at local midnight of 1 December, November has just ended; a millisecond before, October
        assert_eq!(
            latest_month_ended_before(december_start, beijing),
            Some(november)
        );
        assert_eq!(
            latest_month_ended_before(december_start - 1, beijing),
            Some(Period::Month {
                year: 2026,
                month: 10
            })
        );
        let january = Period::Month {
            year: 2027,
            month: 1,
        }
        .bounds(beijing)
        .start_ms;
        assert_eq!(
            latest_month_ended_before(january + 1, beijing),
            Some(Period::Month {
                year: 2026,
                month: 12
            })
        );
    }
}
