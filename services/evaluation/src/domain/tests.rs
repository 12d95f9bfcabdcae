//! Hand-computed examples and properties of the domain.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const HOUR: i64 = MILLIS_PER_HOUR;
/// 2026-11-10T09:00:00+08:00
const WHISTLED: i64 = 1_794_272_400_000;

fn snapshot(id: &str, department: &str) -> AssignmentSnapshot {
    AssignmentSnapshot {
        assignment_id: id.into(),
        case_id: format!("case-{id}"),
        department_code: department.into(),
        role: AssignmentRole::Lead,
        state: AssignmentState::Whistled,
        version: 1,
        whistled_at_ms: WHISTLED,
        acknowledge_by_ms: Some(WHISTLED + HOUR / 2),
        on_site_by_ms: Some(WHISTLED + 2 * HOUR),
        resolve_by_ms: Some(WHISTLED + 24 * HOUR),
        requires_on_site: true,
        acknowledged_at_ms: None,
        on_site_at_ms: None,
        resolved_at_ms: None,
        returned_at_ms: None,
        deferred: false,
        extended: false,
        escalated: false,
    }
}

fn facts(id: &str) -> AssignmentFacts {
    AssignmentFacts::from_snapshot(&snapshot(id, "zw-sanitation"))
}

/// Acknowledged, on site and resolved at the given hours after the whistle; verified.
fn done(id: &str, ack_hours: f64, on_site_hours: f64, resolve_hours: f64) -> AssignmentFacts {
    let at = |hours: f64| WHISTLED + (hours * HOUR as f64) as i64;
    let mut facts = facts(id);
    facts.state = AssignmentState::Resolved;
    facts.acknowledged_at_ms = Some(at(ack_hours));
    facts.on_site_at_ms = Some(at(on_site_hours));
    facts.resolved_at_ms = Some(at(resolve_hours));
    facts.first_resolved_at_ms = Some(at(resolve_hours));
    facts.outcome.verified = true;
    facts
}

fn approx(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("indicator present");
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}

#[test]
fn periods_parse_and_print() {
    assert_eq!(
        Period::parse("2026-11"),
        Ok(Period::Month {
            year: 2026,
            month: 11
        })
    );
    assert_eq!(
        Period::parse("2026-Q4"),
        Ok(Period::Quarter {
            year: 2026,
            quarter: 4
        })
    );
    assert_eq!(Period::parse("2026"), Ok(Period::Year { year: 2026 }));
    for text in ["2026-11", "2026-Q4", "2026", "2026-01"] {
        assert_eq!(Period::parse(text).expect("valid").label(), text);
    }
    for bad in [
        "",
        "26",
        "2026-13",
        "2026-00",
        "2026-1",
        "2026-Q5",
        "2026-Q0",
        "2026-q4",
        "2026-11-01",
        "1969",
        "x026",
        "2026-",
        "２０２６",
    ] {
        assert!(Period::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(
        Period::parse("2026-13")
            .expect_err("bad month")
            .contains("01 to 12")
    );
}

#[test]
fn period_bounds_are_local_midnights() {
    let china = UtcOffset::from_hours(8).expect("offset");
    let november = Period::parse("2026-11").expect("valid").bounds(china);
    // 2026-11-01T00:00+08:00 = 2026-10-31T16:00Z; 2026-12-01T00:00+08:00 = 2026-11-30T16:00Z
    assert_eq!(november.start_ms, 1_793_462_400_000);
    assert_eq!(november.end_ms, 1_796_054_400_000);
    let q4 = Period::parse("2026-Q4").expect("valid").bounds(china);
    assert_eq!(q4.start_ms, 1_790_784_000_000); // 2026-09-30T16:00Z
    assert_eq!(q4.end_ms, november.end_ms + 31 * 24 * HOUR); // December has 31 days
    let year = Period::parse("2026").expect("valid").bounds(china);
    assert_eq!(year.end_ms, q4.end_ms);
    assert!(year.contains(year.start_ms));
    assert!(!year.contains(year.end_ms));
    let utc = UtcOffset::from_hours(0).expect("offset");
    assert_eq!(
        Period::parse("2026-11")
            .expect("valid")
            .bounds(utc)
            .start_ms,
        november.start_ms + 8 * HOUR
    );
    assert!(UtcOffset::from_hours(15).is_err());
}

#[test]
fn small_parsers() {
    assert_eq!(parse_cooperation_score(0).map_err(|_| ()), Err(()));
    assert_eq!(parse_cooperation_score(6).map_err(|_| ()), Err(()));
    assert_eq!(parse_cooperation_score(5), Ok(5));
    assert_eq!(parse_level_filter(""), Ok(None));
    assert_eq!(parse_level_filter("city"), Ok(Some(DepartmentLevel::City)));
    assert!(parse_level_filter("street").is_err());
    assert_eq!(parse_region_filter("420303"), Ok(Some("420303".into())));
    assert!(parse_region_filter("42a").is_err());
    assert!(parse_department_code("zw-sanitation").is_ok());
    assert!(parse_department_code("zw.sanitation").is_err());
    assert!(parse_department_code("").is_err());
    assert!(parse_identifier("").is_err());
    assert!(parse_identifier("rater\u{0}").is_err());
    assert_eq!(Indicator::parse("on_time_rate"), Ok(Indicator::OnTimeRate));
    assert!(Indicator::parse("cooperation").is_err());
}

#[test]
fn every_indicator_on_hand_computed_assignments() {
    // a: all within limits, verified
    let a = done("a", 0.25, 1.0, 5.0);
    // b: late everywhere (ack 1h > 30min, on site 3h > 2h, resolved 30h > 24h), verified
    let b = done("b", 1.0, 3.0, 30.0);
    // c: acknowledged in time, no on-site needed, resolved in time but verification failed once
    let mut c = done("c", 0.1, 0.0, 10.0);
    c.requires_on_site = false;
    c.on_site_at_ms = None;
    c.outcome.verified = false;
    c.outcome.reopen_count = 1;
    // d: returned, and the return was accepted
    let mut d = facts("d");
    d.state = AssignmentState::Returned;
    d.returned_at_ms = Some(WHISTLED + HOUR);
    d.acknowledged_at_ms = Some(WHISTLED + HOUR / 4);
    d.outcome.return_accepted = true;
    // e: deferred, never resolved, deadline passed
    let mut e = facts("e");
    e.outcome.deferred = true;
    // f: still open, deadline not passed as of the scorecard
    let f = facts("f");
    let as_of = WHISTLED + 20 * HOUR;
    let mut g = facts("g");
    g.resolve_by_ms = Some(WHISTLED + 10 * HOUR); // g: open and overdue
    let assignments = vec![a, b, c, d, e, f, g];

    let figures = scorecard(&assignments, &[], &[], as_of, &Scoring::default());
    let counts = figures.counts;
    assert_eq!(counts.whistled, 7);
    assert_eq!(counts.acknowledged, 4); // a b c d
    assert_eq!(counts.acknowledged_within_limit, 3); // a c d
    assert_eq!(counts.required_on_site, 5); // all but c, and d (upheld return)
    assert_eq!(counts.on_site_within_limit, 1); // a
    assert_eq!(counts.resolved, 3); // a b c
    assert_eq!(counts.verified, 2); // a b
    assert_eq!(counts.returned, 1);
    assert_eq!(counts.returns_accepted, 1);
    assert_eq!(counts.deferred, 1);
    assert_eq!(counts.reopened, 1); // c
    assert_eq!(counts.due_in_period, 4); // a b c g (d returned, e deferred, f not yet due)
    assert_eq!(counts.resolved_within_limit, 2); // a c

    let indicators = figures.indicators;
    approx(indicators.report_rate, 3.0 / 7.0);
    approx(indicators.on_site_rate, 1.0 / 5.0);
    approx(indicators.resolution_rate, 2.0 / 5.0); // a b / (7 - d - e)
    approx(indicators.on_time_rate, 2.0 / 4.0);
    approx(indicators.rework_rate, 1.0 / 3.0);
    assert_eq!(indicators.cooperation, None);
    assert_eq!(indicators.satisfaction, None);
    // re-weighted over report (25), resolution (30) and rework (10):
    // (25·3/7 + 30·2/5 + 10·2/3) / 65 · 100
    let expected = (25.0 * 3.0 / 7.0 + 30.0 * 0.4 + 10.0 * 2.0 / 3.0) / 65.0 * 100.0;
    approx(figures.composite, expected);

    let explanation = explain(Indicator::OnTimeRate, &assignments, as_of);
    assert_eq!(explanation.numerator_assignment_ids, vec!["a", "c"]);
    assert_eq!(
        explanation.denominator_assignment_ids,
        vec!["a", "b", "c", "g"]
    );
    let explanation = explain(Indicator::ResolutionRate, &assignments, as_of);
    assert_eq!(explanation.numerator_assignment_ids, vec!["a", "b"]);
    assert_eq!(
        explanation.denominator_assignment_ids,
        vec!["a", "b", "c", "f", "g"]
    );
}

#[test]
fn the_full_composite_of_domain_md() {
    let assignments = vec![done("a", 0.1, 0.5, 2.0), done("b", 2.0, 0.5, 2.0)];
    let ratings = vec![
        CooperationRating {
            assignment_id: "a".into(),
            score: 4,
        },
        CooperationRating {
            assignment_id: "a".into(),
            score: 5,
        },
        CooperationRating {
            assignment_id: "b".into(),
            score: 3,
        },
        CooperationRating {
            assignment_id: "elsewhere".into(),
            score: 1,
        },
    ];
    let callbacks = vec![
        SatisfactionCallback {
            callback_id: "cb1".into(),
            case_id: "case-a".into(),
            result: CallbackResult::Satisfied,
        },
        SatisfactionCallback {
            callback_id: "cb2".into(),
            case_id: "case-b".into(),
            result: CallbackResult::BasicallySatisfied,
        },
        SatisfactionCallback {
            callback_id: "cb3".into(),
            case_id: "case-b".into(),
            result: CallbackResult::Dissatisfied,
        },
        SatisfactionCallback {
            callback_id: "cb4".into(),
            case_id: "case-other".into(),
            result: CallbackResult::Dissatisfied,
        },
    ];
    let figures = scorecard(
        &assignments,
        &ratings,
        &callbacks,
        WHISTLED + 100 * HOUR,
        &Scoring::default(),
    );
    assert_eq!(figures.counts.cooperation_ratings, 3);
    assert_eq!(figures.counts.satisfaction_callbacks, 3);
    approx(figures.indicators.report_rate, 0.5);
    approx(figures.indicators.resolution_rate, 1.0);
    approx(figures.indicators.rework_rate, 0.0);
    // per assignment: a 4.5, b 3 -> mean 3.75 -> (3.75 - 1) / 4 · 100 = 68.75
    approx(figures.indicators.cooperation, 68.75);
    // (1 + 0.9 + 0) / 3
    approx(figures.indicators.satisfaction, 1.9 / 3.0);
    // 25·0.5 + 30·1 + 15·0.6875 + 20·(1.9/3) + 10·(1 − 0)
    let expected = 12.5 + 30.0 + 10.3125 + 20.0 * 1.9 / 3.0 + 10.0;
    approx(figures.composite, expected);
}

#[test]
fn no_assignments_means_no_indicators() {
    let figures = scorecard(&[], &[], &[], WHISTLED, &Scoring::default());
    assert_eq!(figures.counts, Counts::default());
    assert_eq!(figures.indicators, Indicators::default());
    assert_eq!(figures.composite, None);
}

#[test]
fn composite_ignores_zero_weights_and_absent_indicators() {
    let indicators = Indicators {
        on_site_rate: Some(0.0),
        satisfaction: Some(0.5),
        ..Indicators::default()
    };
    // on-site weighs 0 by default, so only satisfaction counts
    approx(composite(&indicators, &Weights::default()), 50.0);
    let only_on_site = Weights {
        on_site_rate: 1.0,
        satisfaction: 0.0,
        ..Weights::default()
    };
    approx(composite(&indicators, &only_on_site), 0.0);
    assert_eq!(composite(&Indicators::default(), &Weights::default()), None);
}

#[test]
fn weights_are_validated() {
    assert!(Weights::default().validate().is_ok());
    let negative = Weights {
        cooperation: -1.0,
        ..Weights::default()
    };
    assert!(
        negative
            .validate()
            .expect_err("negative")
            .starts_with("cooperation")
    );
    let zero = Weights {
        report_rate: 0.0,
        on_site_rate: 0.0,
        resolution_rate: 0.0,
        on_time_rate: 0.0,
        cooperation: 0.0,
        satisfaction: 0.0,
        rework: 0.0,
    };
    assert!(zero.validate().is_err());
    let nan = Weights {
        rework: f64::NAN,
        ..Weights::default()
    };
    assert!(nan.validate().is_err());
}

#[test]
fn dispatch_verdicts_win_over_timestamps() {
    let mut late_by_clock = done("a", 1.0, 3.0, 30.0);
    assert!(!late_by_clock.acknowledged_within_limit());
    late_by_clock.acknowledged_verdict = Some(ReportedVerdict {
        within_limit: true,
        version: 2,
    });
    assert!(late_by_clock.acknowledged_within_limit());
    // an extension moves the resolve deadline
    late_by_clock.resolve_by_ms = Some(WHISTLED + 48 * HOUR);
    assert!(late_by_clock.resolved_within_limit());
    let mut never = facts("n");
    never.acknowledged_verdict = Some(ReportedVerdict {
        within_limit: true,
        version: 2,
    });
    assert!(
        !never.acknowledged_within_limit(),
        "no acknowledgement, no credit"
    );
}

#[test]
fn older_snapshots_do_not_replace_newer_ones() {
    let mut acknowledged = snapshot("a", "zw-sanitation");
    acknowledged.version = 2;
    acknowledged.state = AssignmentState::Acknowledged;
    acknowledged.acknowledged_at_ms = Some(WHISTLED + HOUR / 4);
    let mut resolved = acknowledged.clone();
    resolved.version = 4;
    resolved.state = AssignmentState::Resolved;
    resolved.resolved_at_ms = Some(WHISTLED + 5 * HOUR);
    resolved.extended = true;

    // in order
    let first = merge_snapshot(None, &acknowledged, Some((Milestone::Acknowledged, true)));
    let in_order = merge_snapshot(Some(&first), &resolved, Some((Milestone::Resolved, true)));
    // out of order
    let first = merge_snapshot(None, &resolved, Some((Milestone::Resolved, true)));
    let out_of_order = merge_snapshot(
        Some(&first),
        &acknowledged,
        Some((Milestone::Acknowledged, true)),
    );
    assert_eq!(in_order, out_of_order);
    assert_eq!(in_order.version, 4);
    assert_eq!(in_order.state, AssignmentState::Resolved);
    assert!(in_order.extended);
    assert_eq!(
        in_order.acknowledged_verdict,
        Some(ReportedVerdict {
            within_limit: true,
            version: 2
        })
    );

    // flags never go away, the first resolution is kept through rework
    let mut reworked = resolved.clone();
    reworked.version = 6;
    reworked.state = AssignmentState::Acknowledged;
    reworked.resolved_at_ms = None;
    reworked.extended = false;
    let after_rework = merge_snapshot(Some(&in_order), &reworked, None);
    assert!(after_rework.extended);
    assert_eq!(after_rework.first_resolved_at_ms, Some(WHISTLED + 5 * HOUR));
    assert!(!after_rework.is_resolved());
    assert!(after_rework.was_ever_resolved());
    // a stale verdict does not overwrite a newer one
    let mut resolved_again = reworked.clone();
    resolved_again.version = 8;
    resolved_again.state = AssignmentState::Resolved;
    resolved_again.resolved_at_ms = Some(WHISTLED + 40 * HOUR);
    let latest = merge_snapshot(
        Some(&after_rework),
        &resolved_again,
        Some((Milestone::Resolved, false)),
    );
    let replayed = merge_snapshot(Some(&latest), &resolved, Some((Milestone::Resolved, true)));
    assert_eq!(
        replayed.resolved_verdict,
        Some(ReportedVerdict {
            within_limit: false,
            version: 8
        })
    );
    assert_eq!(replayed.resolved_at_ms, Some(WHISTLED + 40 * HOUR));
}

enum Delivery {
    Snapshot(AssignmentSnapshot),
    Fact(CaseFact),
}

/// Applies deliveries the way the consumers and the store do (snapshots merged, facts kept
/// once per event and assignment) and scores the result.
fn deliver<'a>(deliveries: impl Iterator<Item = &'a Delivery>) -> ScorecardFigures {
    let mut assignments: BTreeMap<String, AssignmentFacts> = BTreeMap::new();
    let mut facts: BTreeMap<(String, String), CaseFact> = BTreeMap::new();
    for delivery in deliveries {
        match delivery {
            Delivery::Snapshot(snapshot) => {
                let merged =
                    merge_snapshot(assignments.get(&snapshot.assignment_id), snapshot, None);
                assignments.insert(snapshot.assignment_id.clone(), merged);
            }
            Delivery::Fact(fact) => {
                facts
                    .entry((fact.event_id.clone(), fact.assignment_id.clone()))
                    .or_insert_with(|| fact.clone());
            }
        }
    }
    let facts: Vec<CaseFact> = facts.into_values().collect();
    let scored: Vec<AssignmentFacts> = assignments
        .into_values()
        .map(|mut assignment| {
            assignment.outcome = derive_outcome(&assignment, &facts);
            assignment
        })
        .collect();
    scorecard(&scored, &[], &[], WHISTLED + 30 * HOUR, &Scoring::default())
}

fn fact(event: &str, assignment: &str, kind: FactKind, flag: bool, hours: i64) -> CaseFact {
    CaseFact {
        event_id: event.into(),
        case_id: format!("case-{assignment}"),
        assignment_id: assignment.into(),
        kind,
        flag,
        occurred_at_ms: WHISTLED + hours * HOUR,
    }
}

#[test]
fn verified_by_the_latest_verdict_naming_the_assignment() {
    let resolved = done("a", 0.1, 0.5, 5.0);
    assert!(!derive_outcome(&resolved, &[]).verified);
    let passed = fact("v1", "a", FactKind::Verdict, true, 6);
    let outcome = derive_outcome(&resolved, std::slice::from_ref(&passed));
    assert!(outcome.verified);
    assert_eq!(outcome.reopen_count, 0);
    assert_eq!(outcome.deciding_event_ids, vec!["v1"]);
    // a verdict on another assignment of another case says nothing about this one
    let other = fact("v2", "b", FactKind::Verdict, true, 6);
    assert!(!derive_outcome(&resolved, &[other]).verified);
    // failed then passed: verified, reworked once; listed in any order
    let failed = fact("v0", "a", FactKind::Verdict, false, 5);
    let outcome = derive_outcome(&resolved, &[passed.clone(), failed.clone()]);
    assert!(outcome.verified);
    assert_eq!(outcome.reopen_count, 1);
    assert_eq!(outcome.deciding_event_ids, vec!["v0", "v1"]);
    // a passed verdict does not verify work that is not resolved now
    let open = facts("a");
    assert!(!derive_outcome(&open, &[passed]).verified);
}

#[test]
fn returns_are_decided_by_the_street() {
    let mut returned = facts("a");
    returned.state = AssignmentState::Returned;
    returned.returned_at_ms = Some(WHISTLED + HOUR / 4);
    // undecided: not upheld, stays in every denominator
    assert!(!derive_outcome(&returned, &[]).return_accepted);
    let upheld = fact("d1", "a", FactKind::ReturnDecided, true, 2);
    let outcome = derive_outcome(&returned, std::slice::from_ref(&upheld));
    assert!(outcome.return_accepted);
    assert_eq!(outcome.returns_rejected, 0);
    // rejected once (推诿), then returned again and upheld
    let rejected = fact("d0", "a", FactKind::ReturnDecided, false, 1);
    let outcome = derive_outcome(&returned, &[upheld, rejected.clone()]);
    assert!(outcome.return_accepted);
    assert_eq!(outcome.returns_rejected, 1);
    let outcome = derive_outcome(&returned, &[rejected]);
    assert!(!outcome.return_accepted);
    assert_eq!(outcome.returns_rejected, 1);
}

#[test]
fn deferral_overdue_escalation_and_local_resolution() {
    let open = facts("a");
    let deferred = fact("x1", "a", FactKind::Deferred, false, 1);
    let resumed = fact("x2", "a", FactKind::Resumed, false, 3);
    assert!(derive_outcome(&open, std::slice::from_ref(&deferred)).deferred);
    assert!(!derive_outcome(&open, &[resumed.clone(), deferred.clone()]).deferred);
    let deferred_again = fact("x3", "a", FactKind::Deferred, false, 4);
    assert!(derive_outcome(&open, &[resumed, deferred_again, deferred]).deferred);
    let outcome = derive_outcome(
        &open,
        &[
            fact("o1", "a", FactKind::Overdue, false, 1),
            fact("o2", "a", FactKind::Overdue, false, 25),
            fact("e1", "a", FactKind::Escalated, false, 26),
            // a redelivered event is one fact
            fact("e1", "a", FactKind::Escalated, false, 26),
            fact("l1", "", FactKind::ResolvedLocally, false, 30),
        ],
    );
    assert_eq!(outcome.overdue, 2);
    assert_eq!(outcome.escalations, 1);
    // the whole-case fact is on case-, not on case-a: not this case
    assert!(!outcome.resolved_locally);
    let mut local = fact("l1", "", FactKind::ResolvedLocally, false, 30);
    local.case_id = "case-a".into();
    assert!(derive_outcome(&open, &[local]).resolved_locally);
}

#[test]
fn report_rate_counts_a_timely_return_and_upheld_returns_leave_the_rest() {
    // whistled at 0, ack limit 0.5h
    // a: returned at 0.25h with a reason, upheld: responded in time; in 报到率 only
    let mut a = facts("a");
    a.state = AssignmentState::Returned;
    a.returned_at_ms = Some(WHISTLED + HOUR / 4);
    a.outcome.returned_in_time = true;
    a.outcome.return_accepted = true;
    // b: returned late (1h), the return rejected (推诿); then never acknowledged, still open
    let mut b = facts("b");
    b.state = AssignmentState::Whistled;
    b.returned_at_ms = Some(WHISTLED + HOUR);
    b.outcome.returns_rejected = 1;
    // c: acknowledged in time, resolved, verified; d: acknowledged late, resolved, reworked
    let c = done("c", 0.25, 1.0, 5.0);
    let mut d = done("d", 1.0, 1.0, 5.0);
    d.outcome.reopen_count = 1;
    d.outcome.verified = false;
    let assignments = vec![a, b, c, d];
    let as_of = WHISTLED + 30 * HOUR;
    let figures = scorecard(&assignments, &[], &[], as_of, &Scoring::default());
    // 报到率 = (a returned in time + c) / 4
    approx(figures.indicators.report_rate, 2.0 / 4.0);
    // 到场率 = c d (on site at 1h ≤ 2h) / (b c d): a left with its upheld return
    approx(figures.indicators.on_site_rate, 2.0 / 3.0);
    // 解决率 = c / (4 − 1 upheld) = 1/3
    approx(figures.indicators.resolution_rate, 1.0 / 3.0);
    // 按期办结率 = c d (resolved at 5 h ≤ 24 h) / due (b open past 24 h, c, d; a upheld)
    approx(figures.indicators.on_time_rate, 2.0 / 3.0);
    // 返工率 = d / (c d)
    approx(figures.indicators.rework_rate, 1.0 / 2.0);
    assert_eq!(figures.counts.returns_accepted, 1);
    assert_eq!(figures.counts.returns_rejected, 1);
    // composite over 报到 25, 解决 30, 返工 10: (25·0.5 + 30/3 + 10·0.5) / 65 · 100
    approx(figures.composite, (12.5 + 10.0 + 5.0) / 65.0 * 100.0);
}

/// docs/evaluation.md, "A worked example": the district enforcement bureau's November.
#[test]
fn the_worked_example_of_docs_evaluation_md() {
    let at = |hours: f64| WHISTLED + (hours * HOUR as f64) as i64;
    let mut facts_published: Vec<CaseFact> = Vec::new();
    let mut publish = |event: &str, assignment: &AssignmentFacts, kind, flag, hours: f64| {
        facts_published.push(CaseFact {
            event_id: event.into(),
            case_id: assignment.case_id.clone(),
            assignment_id: assignment.assignment_id.clone(),
            kind,
            flag,
            occurred_at_ms: at(hours),
        });
    };
    // A1 (lead): 10 min, 40 min, 5 h; passed
    let mut a1 = done("a1", 10.0 / 60.0, 40.0 / 60.0, 5.0);
    a1.outcome = DerivedOutcome::default();
    publish("v-a1", &a1, FactKind::Verdict, true, 6.0);
    // A2 (co): 50 min late, on site 3 h late, resolved 20 h, failed, resolved again 30 h (late)
    let mut a2 = done("a2", 50.0 / 60.0, 3.0, 30.0);
    a2.outcome = DerivedOutcome::default();
    a2.role = AssignmentRole::Co;
    a2.first_resolved_at_ms = Some(at(20.0));
    publish("v-a2-failed", &a2, FactKind::Verdict, false, 21.0);
    publish("o-a2", &a2, FactKind::Overdue, false, 24.0);
    publish("v-a2-passed", &a2, FactKind::Verdict, true, 31.0);
    // A3: returned after 20 min, upheld
    let mut a3 = facts("a3");
    a3.state = AssignmentState::Returned;
    a3.returned_at_ms = Some(at(20.0 / 60.0));
    publish("r-a3", &a3, FactKind::Returned, true, 20.0 / 60.0);
    publish("d-a3", &a3, FactKind::ReturnDecided, true, 1.0);
    // A4 (lead): returned after 2 h (late), rejected; fresh clocks from 3 h: acknowledged late
    // (verdict), on site and resolved in time; passed
    let mut a4 = done("a4", 4.0, 4.5, 10.0);
    a4.outcome = DerivedOutcome::default();
    a4.returned_at_ms = Some(at(2.0));
    a4.acknowledge_by_ms = Some(at(3.5));
    a4.on_site_by_ms = Some(at(5.0));
    a4.resolve_by_ms = Some(at(27.0));
    publish("o-a4", &a4, FactKind::Overdue, false, 0.5);
    publish("r-a4", &a4, FactKind::Returned, false, 2.0);
    publish("d-a4", &a4, FactKind::ReturnDecided, false, 3.0);
    publish("v-a4", &a4, FactKind::Verdict, true, 11.0);
    // A5: 15 min, on site 1 h, then deferred; open
    let mut a5 = facts("a5");
    a5.state = AssignmentState::OnSite;
    a5.acknowledged_at_ms = Some(at(0.25));
    a5.on_site_at_ms = Some(at(1.0));
    publish("x-a5", &a5, FactKind::Deferred, false, 2.0);

    let assignments: Vec<AssignmentFacts> = [a1, a2, a3, a4, a5]
        .into_iter()
        .map(|mut assignment| {
            assignment.outcome = derive_outcome(&assignment, &facts_published);
            assignment
        })
        .collect();
    let rating = |assignment: &str, score| CooperationRating {
        assignment_id: assignment.into(),
        score,
    };
    let ratings = vec![rating("a1", 5), rating("a1", 4), rating("a2", 3)];
    let callback = |id: &str, case: &str, result| SatisfactionCallback {
        callback_id: id.into(),
        case_id: case.into(),
        result,
    };
    let callbacks = vec![
        callback("cb-a1", "case-a1", CallbackResult::Satisfied),
        callback("cb-a2", "case-a2", CallbackResult::Dissatisfied),
        callback("cb-a4", "case-a4", CallbackResult::BasicallySatisfied),
    ];
    let as_of = at(48.0);
    let figures = scorecard(
        &assignments,
        &ratings,
        &callbacks,
        as_of,
        &Scoring::default(),
    );
    let indicators = figures.indicators;
    approx(indicators.report_rate, 3.0 / 5.0);
    approx(indicators.on_site_rate, 3.0 / 4.0);
    approx(indicators.resolution_rate, 1.0);
    approx(indicators.on_time_rate, 2.0 / 3.0);
    approx(indicators.rework_rate, 1.0 / 3.0);
    approx(indicators.cooperation, 68.75);
    approx(indicators.satisfaction, 0.95);
    let counts = figures.counts;
    assert_eq!(
        (
            counts.returns_accepted,
            counts.returns_rejected,
            counts.overdue,
            counts.escalated,
            counts.deferred
        ),
        (1, 1, 2, 0, 1)
    );
    let expected = 15.0 + 30.0 + 10.3125 + 19.0 + 10.0 * (2.0 / 3.0);
    approx(figures.composite, expected);
    assert_eq!(
        format!("{:.1}", figures.composite.unwrap_or_default()),
        "81.0"
    );
    // without ratings and call-backs: re-weighted over 65
    let bare = scorecard(&assignments, &[], &[], as_of, &Scoring::default());
    approx(
        bare.composite,
        (15.0 + 30.0 + 10.0 * (2.0 / 3.0)) / 65.0 * 100.0,
    );
    assert_eq!(format!("{:.1}", bare.composite.unwrap_or_default()), "79.5");
    // the explanation names the deciding events
    let explanation = explain_score(
        Explained::Indicator(Indicator::ReworkRate),
        &assignments,
        &ratings,
        &callbacks,
        as_of,
        &Scoring::default(),
    );
    let a2 = explanation
        .assignments
        .iter()
        .find(|assignment| assignment.assignment_id == "a2")
        .expect("a2 explained");
    assert!(a2.numerator && a2.denominator);
    assert_eq!(
        a2.deciding_event_ids,
        vec!["v-a2-failed", "o-a2", "v-a2-passed"]
    );
}

#[test]
fn under_the_minimum_sample_a_department_is_not_rated() {
    let assignments = vec![done("a", 0.1, 0.5, 2.0), done("b", 0.1, 0.5, 2.0)];
    let scoring = Scoring {
        minimum_assignments: 3,
        ..Scoring::default()
    };
    let figures = scorecard(&assignments, &[], &[], WHISTLED, &scoring);
    assert!(!figures.rated);
    assert_eq!(figures.composite, None);
    // the indicators are still shown
    approx(figures.indicators.report_rate, 1.0);
    let scoring = Scoring {
        minimum_assignments: 2,
        ..Scoring::default()
    };
    let figures = scorecard(&assignments, &[], &[], WHISTLED, &scoring);
    assert!(figures.rated);
    approx(figures.composite, 100.0);
    // no assignments at all: never rated, never 0 and never 100
    let figures = scorecard(&[], &[], &[], WHISTLED, &Scoring::default());
    assert!(!figures.rated);
    assert_eq!(figures.composite, None);
    assert_ne!(Scoring::default().fingerprint(), scoring.fingerprint());
    assert_eq!(
        Scoring::default().fingerprint(),
        Scoring::default().fingerprint()
    );
}

#[test]
fn satisfaction_counts_for_the_lead_only_by_default() {
    let lead = done("a", 0.1, 0.5, 2.0);
    let mut co = done("b", 0.1, 0.5, 2.0);
    co.role = AssignmentRole::Co;
    co.case_id = lead.case_id.clone();
    let callbacks = vec![
        SatisfactionCallback {
            callback_id: "cb1".into(),
            case_id: lead.case_id.clone(),
            result: CallbackResult::BasicallySatisfied,
        },
        SatisfactionCallback {
            callback_id: "cb2".into(),
            case_id: lead.case_id.clone(),
            result: CallbackResult::Dissatisfied,
        },
    ];
    let lead_card = scorecard(&[lead], &[], &callbacks, WHISTLED, &Scoring::default());
    // (0 + 0.9 × 1) / 2
    approx(lead_card.indicators.satisfaction, 0.45);
    let co_card = scorecard(
        std::slice::from_ref(&co),
        &[],
        &callbacks,
        WHISTLED,
        &Scoring::default(),
    );
    assert_eq!(co_card.indicators.satisfaction, None);
    assert_eq!(co_card.counts.satisfaction_callbacks, 0);
    let resolvers = Scoring {
        satisfaction_scope: SatisfactionScope::Resolvers,
        ..Scoring::default()
    };
    let co_card = scorecard(&[co], &[], &callbacks, WHISTLED, &resolvers);
    approx(co_card.indicators.satisfaction, 0.45);
}

#[test]
fn ranking_puts_departments_without_whistles_last() {
    let candidate = |code: &str, composite: Option<f64>, whistled: u64| RankingCandidate {
        department_code: code.into(),
        composite,
        whistled,
    };
    let ranked = rank(vec![
        candidate("idle-b", None, 0),
        candidate("good", Some(90.0), 3),
        candidate("idle-a", None, 0),
        candidate("tie-b", Some(80.0), 1),
        candidate("tie-a", Some(80.0), 2),
        candidate("poor", Some(10.0), 5),
    ]);
    let summary: Vec<(u32, &str)> = ranked
        .iter()
        .map(|entry| (entry.rank, entry.department_code.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "good"),
            (2, "tie-a"),
            (2, "tie-b"),
            (4, "poor"),
            (5, "idle-a"),
            (5, "idle-b"),
        ]
    );
}

fn any_state() -> impl Strategy<Value = AssignmentState> {
    prop_oneof![
        Just(AssignmentState::Whistled),
        Just(AssignmentState::Acknowledged),
        Just(AssignmentState::OnSite),
        Just(AssignmentState::Resolved),
        Just(AssignmentState::Returned),
    ]
}

prop_compose! {
    fn any_assignment()(
        id in 0u32..1000,
        state in any_state(),
        version in 0u64..10,
        deadlines in proptest::array::uniform3(proptest::option::of(-50i64..100)),
        reached in proptest::array::uniform4(proptest::option::of(-50i64..100)),
        verdicts in proptest::array::uniform3(proptest::option::of(any::<bool>())),
        requires_on_site in any::<bool>(),
        flags in proptest::array::uniform3(any::<bool>()),
        verified in any::<bool>(),
        reopen_count in 0u32..3,
        return_accepted in any::<bool>(),
        case in 0u32..5,
    ) -> AssignmentFacts {
        let at = |hours: Option<i64>| hours.map(|hours| WHISTLED + hours * HOUR);
        let verdict = |within: Option<bool>| within.map(|within_limit| ReportedVerdict { within_limit, version });
        AssignmentFacts {
            assignment_id: format!("a{id}"),
            case_id: format!("c{case}"),
            department_code: "zw-sanitation".into(),
            role: AssignmentRole::Lead,
            state,
            version,
            whistled_at_ms: WHISTLED,
            acknowledge_by_ms: at(deadlines[0]),
            on_site_by_ms: at(deadlines[1]),
            resolve_by_ms: at(deadlines[2]),
            requires_on_site,
            acknowledged_at_ms: at(reached[0]),
            acknowledged_verdict: verdict(verdicts[0]),
            on_site_at_ms: at(reached[1]),
            on_site_verdict: verdict(verdicts[1]),
            resolved_at_ms: at(reached[2]),
            first_resolved_at_ms: at(reached[3]),
            resolved_verdict: verdict(verdicts[2]),
            returned_at_ms: None,
            deferred: flags[0],
            extended: flags[1],
            escalated: flags[2],
            outcome: DerivedOutcome { verified, reopen_count, return_accepted, ..DerivedOutcome::default() },
        }
    }
}

fn any_weights() -> impl Strategy<Value = Weights> {
    proptest::array::uniform7(0.0f64..100.0).prop_map(|weights| Weights {
        report_rate: weights[0],
        on_site_rate: weights[1],
        resolution_rate: weights[2],
        on_time_rate: weights[3],
        cooperation: weights[4],
        satisfaction: weights[5],
        rework: weights[6],
    })
}

proptest! {
    #[test]
    fn indicators_and_composite_stay_within_bounds(
        assignments in proptest::collection::vec(any_assignment(), 0..30),
        scores in proptest::collection::vec((0u32..1000, 1u8..=5), 0..20),
        answers in proptest::collection::vec((0u32..5, 0u8..3), 0..10),
        as_of_hours in -60i64..200,
        weights in any_weights(),
    ) {
        let ratings: Vec<CooperationRating> = scores
            .into_iter()
            .map(|(id, score)| CooperationRating { assignment_id: format!("a{id}"), score })
            .collect();
        let callbacks: Vec<SatisfactionCallback> = answers
            .into_iter()
            .enumerate()
            .map(|(index, (case, answer))| SatisfactionCallback {
                callback_id: format!("cb{index}"),
                case_id: format!("c{case}"),
                result: [CallbackResult::Satisfied, CallbackResult::BasicallySatisfied, CallbackResult::Dissatisfied][answer as usize],
            })
            .collect();
        let as_of = WHISTLED + as_of_hours * HOUR;
        let scoring = Scoring { weights, ..Scoring::default() };
        let figures = scorecard(&assignments, &ratings, &callbacks, as_of, &scoring);
        let indicators = figures.indicators;
        for rate in [
            indicators.report_rate,
            indicators.on_site_rate,
            indicators.resolution_rate,
            indicators.on_time_rate,
            indicators.rework_rate,
            indicators.satisfaction,
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!((0.0..=1.0).contains(&rate), "rate {rate}");
        }
        if let Some(cooperation) = indicators.cooperation {
            prop_assert!((0.0..=100.0).contains(&cooperation));
        }
        if let Some(composite) = figures.composite {
            prop_assert!((0.0..=100.0).contains(&composite), "composite {composite}");
        }
        prop_assert_eq!(figures.counts.whistled, assignments.len() as u64);
        prop_assert_eq!(indicators.report_rate.is_some(), !assignments.is_empty());
        let counts = figures.counts;
        prop_assert!(counts.acknowledged_within_limit <= counts.whistled);
        prop_assert!(counts.on_site_within_limit <= counts.required_on_site);
        prop_assert!(counts.resolved_within_limit <= counts.due_in_period);
        prop_assert!(counts.reopened <= counts.resolved);
        for indicator in Indicator::ALL {
            let explanation = explain(indicator, &assignments, as_of);
            for id in &explanation.numerator_assignment_ids {
                prop_assert!(explanation.denominator_assignment_ids.contains(id));
            }
        }
    }

    #[test]
    fn period_parsing_never_panics_and_round_trips(input in "[0-9Q-]{0,10}") {
        if let Ok(period) = Period::parse(&input) {
            prop_assert_eq!(period.label(), input);
            let bounds = period.bounds(UtcOffset::from_hours(8).expect("offset"));
            prop_assert!(bounds.start_ms < bounds.end_ms);
        }
    }

    #[test]
    fn consecutive_months_tile_the_year(year in 1970i32..2500, offset in -12i32..=14) {
        let offset = UtcOffset::from_hours(offset).expect("offset");
        let whole = Period::Year { year }.bounds(offset);
        let mut start = whole.start_ms;
        for month in 1..=12 {
            let bounds = Period::Month { year, month }.bounds(offset);
            prop_assert_eq!(bounds.start_ms, start);
            start = bounds.end_ms;
        }
        prop_assert_eq!(start, whole.end_ms);
    }

    #[test]
    fn merging_snapshots_in_any_order_agrees(versions in proptest::collection::vec(1u64..20, 1..6)) {
        let snapshots: Vec<AssignmentSnapshot> = versions
            .iter()
            .map(|version| {
                let mut snapshot = snapshot("a", "zw-sanitation");
                snapshot.version = *version;
                snapshot.resolved_at_ms = Some(WHISTLED + *version as i64 * HOUR);
                snapshot.deferred = version % 3 == 0;
                snapshot
            })
            .collect();
        let fold = |order: &mut dyn Iterator<Item = &AssignmentSnapshot>| {
            let mut facts: Option<AssignmentFacts> = None;
            for snapshot in order {
                facts = Some(merge_snapshot(facts.as_ref(), snapshot, None));
            }
            facts
        };
        let forward = fold(&mut snapshots.iter()).expect("some");
        let backward = fold(&mut snapshots.iter().rev()).expect("some");
        let newest = versions.iter().max().copied().unwrap_or_default();
        prop_assert_eq!(forward.version, newest);
        prop_assert_eq!(backward.version, newest);
        prop_assert_eq!(forward.first_resolved_at_ms, backward.first_resolved_at_ms);
        prop_assert_eq!(forward.deferred, backward.deferred);
        prop_assert_eq!(forward.resolved_at_ms, Some(WHISTLED + newest as i64 * HOUR));
        prop_assert_eq!(backward.resolved_at_ms, Some(WHISTLED + newest as i64 * HOUR));
    }

    /// A generated history of two assignments on one case: snapshots (whistle events) and
    /// published facts (case events). Delivered in any order, with any event delivered twice,
    /// it gives the same scorecard as delivered in order once.
    #[test]
    fn any_delivery_order_and_redelivery_gives_the_same_scorecard(
        kinds in proptest::collection::vec((0usize..8, 0usize..2, any::<bool>(), 0i64..60), 0..12),
        states in proptest::collection::vec((0usize..2, 1u64..6), 1..8),
        order in Just((0usize..20).collect::<Vec<_>>()).prop_shuffle(),
        repeats in proptest::collection::vec(0usize..20, 0..6),
    ) {
        let ids = ["a", "b"];
        let mut events: Vec<Delivery> = Vec::new();
        // one version is one snapshot: a is worked and resolved (and reworked); b is returned,
        // the return rejected, then acknowledged
        use AssignmentState::{Acknowledged, OnSite, Resolved, Returned, Whistled};
        let lives = [
            [Whistled, Acknowledged, OnSite, Resolved, Resolved],
            [Whistled, Returned, Whistled, Acknowledged, Returned],
        ];
        for (which, version) in &states {
            let mut snapshot = snapshot(ids[*which], "zw-sanitation");
            snapshot.case_id = "case-x".into();
            snapshot.version = *version;
            snapshot.state = lives[*which][(*version - 1) as usize];
            if snapshot.state == AssignmentState::Resolved {
                snapshot.resolved_at_ms = Some(WHISTLED + *version as i64 * HOUR);
            }
            if snapshot.state == AssignmentState::Returned {
                snapshot.returned_at_ms = Some(WHISTLED + HOUR / 4);
            }
            if *version > 1 {
                snapshot.acknowledged_at_ms = Some(WHISTLED + *version as i64 * HOUR / 8);
            }
            events.push(Delivery::Snapshot(snapshot));
        }
        for (index, (kind, which, flag, hours)) in kinds.iter().enumerate() {
            let mut fact = fact(&format!("e{index}"), ids[*which], FactKind::ALL[*kind], *flag, *hours);
            fact.case_id = "case-x".into();
            if fact.kind == FactKind::ResolvedLocally {
                fact.assignment_id.clear();
            }
            events.push(Delivery::Fact(fact));
        }
        let in_order = deliver(events.iter());
        let mut shuffled: Vec<&Delivery> = order
            .iter()
            .filter_map(|index| events.get(*index))
            .collect();
        shuffled.extend(repeats.iter().filter_map(|index| events.get(*index)));
        let reordered = deliver(shuffled.into_iter());
        prop_assert_eq!(in_order, reordered);
    }
}
