//! Duplicate merging and recurring problems: which open case a report joins, and whether a new
//! case is a problem that keeps coming back (几经反复). Pure: callers load the candidates.

use crate::config::{MergingConfig, RecurrenceConfig};
use crate::geometry::{Position, SearchBox, distance_meters};

/// How a category's reports merge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeRule {
    pub distance_meters: f64,
    pub window_ms: i64,
}

/// The distance that makes two reports of `category` "the same place" (used by recurrence even
/// when merging is off or the category is always separate).
pub fn distance_for(config: &MergingConfig, category: &str) -> f64 {
    config
        .categories
        .get(category)
        .and_then(|own| own.distance_meters)
        .unwrap_or(config.distance_meters)
}

/// The rule for `category`; `None` when its reports never merge (merging off, or the category is
/// configured always separate).
pub fn rule_for(config: &MergingConfig, category: &str) -> Option<MergeRule> {
    if !config.enabled || config.always_separate.iter().any(|code| code == category) {
        return None;
    }
    let hours = config
        .categories
        .get(category)
        .and_then(|own| own.window_hours)
        .unwrap_or(config.window_hours);
    Some(MergeRule {
        distance_meters: distance_for(config, category),
        window_ms: i64::try_from(hours)
            .unwrap_or(i64::MAX / 3_600_000)
            .saturating_mul(3_600_000),
    })
}

/// An open case of the report's category and street, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenCase {
    pub case_id: String,
    pub position: Position,
    pub opened_at_ms: i64,
}

/// The open case a report at `position`, received at `now_ms`, joins: within the distance of the
/// case's first report and the window since the case opened; the nearest, then the oldest.
pub fn choose_case(
    rule: MergeRule,
    candidates: &[OpenCase],
    position: Position,
    now_ms: i64,
) -> Option<(&OpenCase, f64)> {
    candidates
        .iter()
        .filter(|case| now_ms.saturating_sub(case.opened_at_ms) <= rule.window_ms)
        .map(|case| (case, distance_meters(case.position, position)))
        .filter(|(_, meters)| *meters <= rule.distance_meters)
        .min_by(|(a, a_meters), (b, b_meters)| {
            a_meters
                .total_cmp(b_meters)
                .then(a.opened_at_ms.cmp(&b.opened_at_ms))
                .then(a.case_id.cmp(&b.case_id))
        })
}

/// A closed case of the report's category, as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedCase {
    pub case_id: String,
    pub position: Position,
    pub closed_at_ms: i64,
}

/// The earlier cases that make a new report at `position` recurrent: at least `config.cases`
/// cases of its category closed within `config.days` before `now_ms`, each within `distance_meters`
/// of it (so within twice that of each other). Oldest first, at most `max_ids` of the latest.
/// `None` when there are fewer, or recurrence is off.
pub fn recurrence(
    config: &RecurrenceConfig,
    distance_meters_limit: f64,
    closed: &[ClosedCase],
    position: Position,
    now_ms: i64,
    max_ids: usize,
) -> Option<Vec<String>> {
    if !config.enabled {
        return None;
    }
    let window_ms = i64::try_from(config.days)
        .unwrap_or(i64::MAX / 86_400_000)
        .saturating_mul(86_400_000);
    let mut near: Vec<&ClosedCase> = closed
        .iter()
        .filter(|case| {
            case.closed_at_ms <= now_ms && now_ms.saturating_sub(case.closed_at_ms) <= window_ms
        })
        .filter(|case| distance_meters(case.position, position) <= distance_meters_limit)
        .collect();
    if near.len() < config.cases {
        return None;
    }
    near.sort_by(|a, b| {
        a.closed_at_ms
            .cmp(&b.closed_at_ms)
            .then(a.case_id.cmp(&b.case_id))
    });
    let skip = near.len().saturating_sub(max_ids.max(1));
    Some(
        near.into_iter()
            .skip(skip)
            .map(|case| case.case_id.clone())
            .collect(),
    )
}

/// The areas whose merge locks a report at `position` takes before it looks for an open case of
/// its category within `distance_meters`, so that two reports that could join one case decide one
/// after the other, and reports farther apart do not wait for each other.
///
/// The plane is cut into cells as tall as the search box (`SearchBox::around`) and, in each row of
/// cells, about as wide; a report locks every cell its own search box touches (two to six).
/// Another report whose case this one's search could find lies inside this box, so in a cell this
/// report locks, and it locks its own cell too: the two share a lock. The cells of a row depend on
/// the row only, never on the report, which is what makes the cells of two reports comparable.
/// Each area is `street:row:column`, sorted, so that transactions lock overlapping sets in one
/// order.
pub fn merge_areas(street_code: &str, position: Position, distance_meters: f64) -> Vec<String> {
    let search = SearchBox::around(position, distance_meters);
    // as tall as any search box of this distance (the box's height does not depend on the place)
    let height = (search.max_lat - search.min_lat).max(1e-7);
    let first_row = (search.min_lat / height).floor() as i64;
    let last_row = (search.max_lat / height).floor() as i64;
    let mut areas = Vec::new();
    for row in first_row..=last_row {
        let row_middle = (row as f64 + 0.5) * height;
        let cos = row_middle.to_radians().cos().abs().max(0.01);
        let width = (height / cos).min(360.0);
        let first_column = (search.min_lng / width).floor() as i64;
        let last_column = (search.max_lng / width).floor() as i64;
        for column in first_column..=last_column {
            areas.push(format!("{street_code}:{row}:{column}"));
        }
    }
    areas.sort_unstable();
    areas.dedup();
    areas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CategoryMerging;
    use proptest::prelude::*;

    proptest! {
        /// Two reports that one's search could bring together share a merge lock; each locks a
        /// handful of cells.
        #[test]
        fn reports_a_search_could_join_share_a_merge_area(
            lat in -60.0f64..60.0,
            lng in -179.0f64..179.0,
            distance in 1.0f64..2_000.0,
            // where the other report lies inside the first one's search box, as fractions of it
            north in 0.0f64..=1.0,
            east in 0.0f64..=1.0,
        ) {
            let first = Position { lat, lng };
            let search = SearchBox::around(first, distance);
            let other = Position {
                lat: search.min_lat + north * (search.max_lat - search.min_lat),
                lng: search.min_lng + east * (search.max_lng - search.min_lng),
            };
            let mine = merge_areas("420303003", first, distance);
            let theirs = merge_areas("420303003", other, distance);
            prop_assert!((1..=9).contains(&mine.len()), "{mine:?}");
            prop_assert!(
                mine.iter().any(|area| theirs.contains(area)),
                "{first:?} {other:?}: {mine:?} and {theirs:?} share no area"
            );
        }
    }

    #[test]
    fn reports_far_apart_lock_different_areas() {
        let here = merge_areas("420303003", HERE, 50.0);
        // about 1 km north
        let north = Position {
            lat: HERE.lat + 0.009,
            lng: HERE.lng,
        };
        let there = merge_areas("420303003", north, 50.0);
        assert!(
            here.iter().all(|area| !there.contains(area)),
            "{here:?} {there:?}"
        );
        // the same place in another street is another lock
        let elsewhere = merge_areas("420303004", HERE, 50.0);
        assert!(here.iter().all(|area| !elsewhere.contains(area)));
    }

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    // 中岳路2号; 0.0001° of latitude is about 11 m
    const HERE: Position = Position {
        lat: 32.6369,
        lng: 110.7986,
    };

    fn north(meters: f64) -> Position {
        Position {
            lat: HERE.lat + meters / 111_195.0,
            lng: HERE.lng,
        }
    }

    fn open(id: &str, position: Position, opened_at_ms: i64) -> OpenCase {
        OpenCase {
            case_id: id.into(),
            position,
            opened_at_ms,
        }
    }

    #[test]
    fn rules_per_category_and_always_separate() {
        let mut config = MergingConfig::default();
        config.always_separate.push("E-05-07".into());
        config.categories.insert(
            "E-04-09".into(),
            CategoryMerging {
                distance_meters: Some(120.0),
                window_hours: None,
            },
        );
        assert_eq!(
            rule_for(&config, "E-01-03"),
            Some(MergeRule {
                distance_meters: 50.0,
                window_ms: 24 * HOUR
            })
        );
        assert_eq!(
            rule_for(&config, "E-04-09").map(|rule| rule.distance_meters),
            Some(120.0)
        );
        assert_eq!(rule_for(&config, "E-05-07"), None, "always separate");
        assert_eq!(distance_for(&config, "E-05-07"), 50.0);
        config.enabled = false;
        assert_eq!(rule_for(&config, "E-01-03"), None, "merging off");
    }

    #[test]
    fn inside_and_outside_distance_and_window() {
        let rule = rule_for(&MergingConfig::default(), "E-01-03").expect("merges");
        let now = 100 * DAY;
        let near = [open("near", north(30.0), now - HOUR)];
        let (case, meters) = choose_case(rule, &near, HERE, now).expect("30 m, 1 h: joins");
        assert_eq!(case.case_id, "near");
        assert!((29.0..31.0).contains(&meters), "{meters}");
        assert!(choose_case(rule, &[open("far", north(60.0), now - HOUR)], HERE, now).is_none());
        assert!(
            choose_case(
                rule,
                &[open("old", north(10.0), now - 25 * HOUR)],
                HERE,
                now
            )
            .is_none()
        );
        // exactly at the limits still joins
        assert!(
            choose_case(
                rule,
                &[open("edge", north(49.9), now - 24 * HOUR)],
                HERE,
                now
            )
            .is_some()
        );
    }

    #[test]
    fn the_nearest_then_the_oldest_case_is_joined() {
        let rule = rule_for(&MergingConfig::default(), "E-01-03").expect("merges");
        let now = 100 * DAY;
        let cases = [
            open("b-older-farther", north(40.0), now - 5 * HOUR),
            open("c-nearest", north(5.0), now - HOUR),
            open("a-same-distance-newer", north(5.0), now - 10),
        ];
        let (case, _) = choose_case(rule, &cases, HERE, now).expect("joins");
        assert_eq!(case.case_id, "c-nearest");
    }

    fn closed(id: &str, position: Position, closed_at_ms: i64) -> ClosedCase {
        ClosedCase {
            case_id: id.into(),
            position,
            closed_at_ms,
        }
    }

    #[test]
    fn three_closures_in_thirty_days_make_the_next_report_recurrent() {
        let config = RecurrenceConfig::default();
        let now = 100 * DAY;
        let history = [
            closed("c1", north(10.0), now - 20 * DAY),
            closed("c2", north(-20.0), now - 10 * DAY),
            closed("c3", north(0.0), now - DAY),
        ];
        assert_eq!(
            recurrence(&config, 50.0, &history, HERE, now, 20),
            Some(vec!["c1".into(), "c2".into(), "c3".into()])
        );
        // two are not enough
        assert_eq!(
            recurrence(&config, 50.0, &history[1..], HERE, now, 20),
            None
        );
        // one of them too far away
        let far = [
            history[0].clone(),
            history[1].clone(),
            closed("c3", north(80.0), now - DAY),
        ];
        assert_eq!(recurrence(&config, 50.0, &far, HERE, now, 20), None);
        // one of them too long ago
        let old = [
            closed("c0", north(0.0), now - 31 * DAY),
            history[1].clone(),
            history[2].clone(),
        ];
        assert_eq!(recurrence(&config, 50.0, &old, HERE, now, 20), None);
        // at most max_ids, the latest
        assert_eq!(
            recurrence(&config, 50.0, &history, HERE, now, 2),
            Some(vec!["c2".into(), "c3".into()])
        );
        let off = RecurrenceConfig {
            enabled: false,
            ..config
        };
        assert_eq!(recurrence(&off, 50.0, &history, HERE, now, 20), None);
    }

    proptest! {
        #[test]
        fn a_chosen_case_is_always_within_the_rule(
            offsets in proptest::collection::vec((-200.0f64..200.0, 0i64..(48 * HOUR)), 0..12),
        ) {
            let rule = rule_for(&MergingConfig::default(), "E-01-03").expect("merges");
            let now = 100 * DAY;
            let cases: Vec<OpenCase> = offsets
                .iter()
                .enumerate()
                .map(|(index, (meters, age))| open(&format!("case-{index}"), north(*meters), now - age))
                .collect();
            match choose_case(rule, &cases, HERE, now) {
                Some((case, meters)) => {
                    prop_assert!(meters <= rule.distance_meters);
                    prop_assert!(now - case.opened_at_ms <= rule.window_ms);
                    for other in &cases {
                        let eligible = now - other.opened_at_ms <= rule.window_ms;
                        prop_assert!(!eligible || distance_meters(other.position, HERE) >= meters);
                    }
                }
                None => {
                    for case in &cases {
                        prop_assert!(
                            now - case.opened_at_ms > rule.window_ms
                                || distance_meters(case.position, HERE) > rule.distance_meters
                        );
                    }
                }
            }
        }
    }
}
