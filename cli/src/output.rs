//! What the client commands print: aligned text for people, JSON (`--json`) for machines. Enum
//! values are shown by their proto names without the type prefix (`WHISTLED`, `LEAD`), times in
//! RFC 3339 UTC.

use serde_json::{Value, json};
use whistle_proto::dispatch::Case;
use whistle_proto::evaluation::Scorecard;
use whistle_proto::gateway::Notice;
use whistle_proto::intake::SubmitReportResponse;
use whistle_proto::types::{
    Assignment, AssignmentFlag, AssignmentRole, AssignmentStatus, CaseStatus, Channel, Severity,
};

/// Text or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|timestamp| {
            chrono::DateTime::from_timestamp(timestamp.seconds, timestamp.nanos.max(0) as u32)
        })
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `ASSIGNMENT_STATUS_WHISTLED` -> `WHISTLED`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_string()
}

fn case_status(value: i32) -> String {
    CaseStatus::try_from(value).map_or(value.to_string(), |status| {
        short(status.as_str_name(), "CASE_STATUS_")
    })
}

fn assignment_status(value: i32) -> String {
    AssignmentStatus::try_from(value).map_or(value.to_string(), |status| {
        short(status.as_str_name(), "ASSIGNMENT_STATUS_")
    })
}

fn role(value: i32) -> String {
    AssignmentRole::try_from(value).map_or(value.to_string(), |role| {
        short(role.as_str_name(), "ASSIGNMENT_ROLE_")
    })
}

fn flags(values: &[i32]) -> Vec<String> {
    values
        .iter()
        .map(|value| {
            AssignmentFlag::try_from(*value).map_or(value.to_string(), |flag| {
                short(flag.as_str_name(), "ASSIGNMENT_FLAG_")
            })
        })
        .collect()
}

fn severity(value: i32) -> String {
    Severity::try_from(value).map_or(value.to_string(), |severity| {
        short(severity.as_str_name(), "SEVERITY_")
    })
}

fn channel(value: i32) -> String {
    Channel::try_from(value).map_or(value.to_string(), |channel| {
        short(channel.as_str_name(), "CHANNEL_")
    })
}

/// Rows of `label  value`, labels padded to one width; empty values are left out.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    rows.iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

/// Columns padded to the widest cell (counted in characters; CJK text may still look uneven).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            let pad = widths[index].saturating_sub(cell.chars().count());
            text.push_str(cell);
            if index + 1 < cells.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut text = line(header.iter().map(|cell| cell.to_string()).collect());
    for row in rows {
        text.push_str(&line(row.clone()));
    }
    text
}

pub fn assignment_json(assignment: &Assignment) -> Value {
    let deadlines = assignment.deadlines.unwrap_or_default();
    json!({
        "assignment_id": assignment.assignment_id,
        "case_id": assignment.case_id,
        "department_code": assignment.department_code,
        "role": role(assignment.role),
        "status": assignment_status(assignment.status),
        "flags": flags(&assignment.flags),
        "whistled_at": time(assignment.whistled_at.as_ref()),
        "acknowledge_by": time(deadlines.acknowledge_by.as_ref()),
        "on_site_by": time(deadlines.on_site_by.as_ref()),
        "resolve_by": time(deadlines.resolve_by.as_ref()),
        "requires_on_site": assignment.requires_on_site,
        "acknowledged_at": time(assignment.acknowledged_at.as_ref()),
        "responsible_person": assignment.responsible_person,
        "contact_phone": assignment.contact_phone,
        "promised_at": time(assignment.promised_at.as_ref()),
        "on_site_at": time(assignment.on_site_at.as_ref()),
        "resolved_at": time(assignment.resolved_at.as_ref()),
        "resolution": assignment.resolution,
        "returned_at": time(assignment.returned_at.as_ref()),
        "return_reason": assignment.return_reason,
        "suggested_department_code": assignment.suggested_department_code,
        "version": assignment.version,
    })
}

/// One assignment, as a department sees it after an action.
pub fn assignment(assignment: &Assignment, format: Format) -> String {
    if format == Format::Json {
        return assignment_json(assignment).to_string() + "\n";
    }
    let deadlines = assignment.deadlines.unwrap_or_default();
    fields(&[
        ("assignment", assignment.assignment_id.clone()),
        ("case", assignment.case_id.clone()),
        ("department", assignment.department_code.clone()),
        ("role", role(assignment.role)),
        ("status", assignment_status(assignment.status)),
        ("flags", flags(&assignment.flags).join(", ")),
        ("whistled at", time(assignment.whistled_at.as_ref())),
        ("acknowledge by", time(deadlines.acknowledge_by.as_ref())),
        ("on site by", time(deadlines.on_site_by.as_ref())),
        ("resolve by", time(deadlines.resolve_by.as_ref())),
        ("acknowledged at", time(assignment.acknowledged_at.as_ref())),
        ("responsible", assignment.responsible_person.clone()),
        ("on site at", time(assignment.on_site_at.as_ref())),
        ("resolved at", time(assignment.resolved_at.as_ref())),
        ("resolution", assignment.resolution.clone()),
        ("returned at", time(assignment.returned_at.as_ref())),
        ("return reason", assignment.return_reason.clone()),
    ])
}

/// A case with its assignments and timeline.
pub fn case(case: &Case, format: Format) -> String {
    let place = case.place.clone().unwrap_or_default();
    let region = case.region.clone().unwrap_or_default();
    if format == Format::Json {
        return json!({
            "case_id": case.case_id,
            "status": case_status(case.status),
            "category_code": case.category_code,
            "severity": severity(case.severity),
            "channel": channel(case.channel),
            "description": case.description,
            "address": place.address,
            "grid_code": place.grid_code,
            "lat": place.lat,
            "lng": place.lng,
            "street": region.street_slug,
            "report_id": case.report_id,
            "reported_at": time(case.reported_at.as_ref()),
            "route_id": case.route_id,
            "reject_reason": case.reject_reason,
            "version": case.version,
            "assignments": case.assignments.iter().map(assignment_json).collect::<Vec<_>>(),
            "timeline": case.timeline.iter().map(|entry| json!({
                "at": time(entry.at.as_ref()),
                "kind": entry.kind,
                "actor": entry.actor,
                "assignment_id": entry.assignment_id,
                "detail": entry.detail,
            })).collect::<Vec<_>>(),
        })
        .to_string()
            + "\n";
    }
    let mut text = fields(&[
        ("case", case.case_id.clone()),
        ("status", case_status(case.status)),
        ("category", case.category_code.clone()),
        ("severity", severity(case.severity)),
        ("channel", channel(case.channel)),
        ("place", format!("{} ({})", place.address, place.grid_code)),
        ("street", region.street_slug.clone()),
        ("reported at", time(case.reported_at.as_ref())),
        ("route", case.route_id.clone()),
        ("rejected", case.reject_reason.clone()),
        ("description", case.description.clone()),
    ]);
    text.push_str("\nassignments\n");
    let rows: Vec<Vec<String>> = case
        .assignments
        .iter()
        .map(|assignment| {
            let deadlines = assignment.deadlines.unwrap_or_default();
            vec![
                assignment.assignment_id.clone(),
                assignment.department_code.clone(),
                role(assignment.role),
                assignment_status(assignment.status),
                time(deadlines.acknowledge_by.as_ref()),
                assignment.responsible_person.clone(),
                flags(&assignment.flags).join(","),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "ASSIGNMENT",
            "DEPARTMENT",
            "ROLE",
            "STATUS",
            "ACKNOWLEDGE BY",
            "RESPONSIBLE",
            "FLAGS",
        ],
        &rows,
    ));
    text.push_str("\ntimeline\n");
    let rows: Vec<Vec<String>> = case
        .timeline
        .iter()
        .map(|entry| {
            vec![
                time(entry.at.as_ref()),
                entry.kind.clone(),
                entry.actor.clone(),
                entry.detail.clone(),
            ]
        })
        .collect();
    text.push_str(&table(&["AT", "EVENT", "ACTOR", "DETAIL"], &rows));
    text
}

/// A department's scorecard: indicators, composite and counts.
pub fn scorecard(scorecard: &Scorecard, format: Format) -> String {
    let counts = scorecard.counts.unwrap_or_default();
    let indicators = scorecard.indicators.unwrap_or_default();
    let percent = |value: Option<f64>| value.map(|value| format!("{:.1}%", value * 100.0));
    let score = |value: Option<f64>| value.map(|value| format!("{value:.1}"));
    if format == Format::Json {
        return json!({
            "department_code": scorecard.department_code,
            "period": scorecard.period,
            "composite": scorecard.composite,
            "indicators": {
                "report_rate": indicators.report_rate,
                "on_site_rate": indicators.on_site_rate,
                "resolution_rate": indicators.resolution_rate,
                "on_time_rate": indicators.on_time_rate,
                "rework_rate": indicators.rework_rate,
                "cooperation": indicators.cooperation,
                "satisfaction": indicators.satisfaction,
            },
            "counts": {
                "whistled": counts.whistled,
                "acknowledged": counts.acknowledged,
                "acknowledged_within_limit": counts.acknowledged_within_limit,
                "required_on_site": counts.required_on_site,
                "on_site_within_limit": counts.on_site_within_limit,
                "resolved": counts.resolved,
                "resolved_within_limit": counts.resolved_within_limit,
                "verified": counts.verified,
                "returned": counts.returned,
                "returns_accepted": counts.returns_accepted,
                "deferred": counts.deferred,
                "reopened": counts.reopened,
                "due_in_period": counts.due_in_period,
                "cooperation_ratings": counts.cooperation_ratings,
                "satisfaction_callbacks": counts.satisfaction_callbacks,
            },
            "computed_at": time(scorecard.computed_at.as_ref()),
        })
        .to_string()
            + "\n";
    }
    let none = || "-".to_string();
    let mut text = fields(&[
        ("department", scorecard.department_code.clone()),
        ("period", scorecard.period.clone()),
        ("composite", score(scorecard.composite).unwrap_or_else(none)),
    ]);
    text.push('\n');
    text.push_str(&table(
        &["INDICATOR", "VALUE"],
        &[
            vec![
                "报到率 report rate".into(),
                percent(indicators.report_rate).unwrap_or_else(none),
            ],
            vec![
                "到场率 on-site rate".into(),
                percent(indicators.on_site_rate).unwrap_or_else(none),
            ],
            vec![
                "解决率 resolution rate".into(),
                percent(indicators.resolution_rate).unwrap_or_else(none),
            ],
            vec![
                "按期办结率 on-time rate".into(),
                percent(indicators.on_time_rate).unwrap_or_else(none),
            ],
            vec![
                "返工率 rework rate".into(),
                percent(indicators.rework_rate).unwrap_or_else(none),
            ],
            vec![
                "配合度 cooperation".into(),
                score(indicators.cooperation).unwrap_or_else(none),
            ],
            vec![
                "满意率 satisfaction".into(),
                percent(indicators.satisfaction).unwrap_or_else(none),
            ],
        ],
    ));
    text.push('\n');
    let count = |label: &str, value: u64| vec![label.to_string(), value.to_string()];
    text.push_str(&table(
        &["COUNT", "N"],
        &[
            count("whistled", counts.whistled),
            count("acknowledged", counts.acknowledged),
            count(
                "acknowledged within limit",
                counts.acknowledged_within_limit,
            ),
            count("required on site", counts.required_on_site),
            count("on site within limit", counts.on_site_within_limit),
            count("resolved", counts.resolved),
            count("resolved within limit", counts.resolved_within_limit),
            count("verified", counts.verified),
            count("returned", counts.returned),
            count("returns accepted", counts.returns_accepted),
            count("deferred", counts.deferred),
            count("reopened", counts.reopened),
            count("due in period", counts.due_in_period),
            count("cooperation ratings", counts.cooperation_ratings),
            count("satisfaction call-backs", counts.satisfaction_callbacks),
        ],
    ));
    text
}

/// One notice of a department's stream, one line of text or one JSON object per line.
pub fn notice(notice: &Notice, format: Format) -> String {
    if format == Format::Json {
        return json!({
            "sequence": notice.sequence,
            "kind": notice.kind,
            "case_id": notice.case_id,
            "assignment_id": notice.assignment_id,
            "subject": notice.subject,
            "delivered_at": time(notice.delivered_at.as_ref()),
        })
        .to_string()
            + "\n";
    }
    format!(
        "#{:<5} {:<22} case {}  assignment {}\n",
        notice.sequence, notice.kind, notice.case_id, notice.assignment_id
    )
}

/// The answer to a report.
pub fn submitted(response: &SubmitReportResponse, format: Format) -> String {
    if format == Format::Json {
        return json!({
            "report_id": response.report_id,
            "case_id": response.case_id,
            "merged": response.merged,
        })
        .to_string()
            + "\n";
    }
    fields(&[
        ("report", response.report_id.clone()),
        ("case", response.case_id.clone()),
        (
            "merged",
            if response.merged {
                "yes, into an open case".into()
            } else {
                String::new()
            },
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["first".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A      LONGER\nfirst  x\nb      y\n");
    }

    #[test]
    fn assignments_print_without_debug_dumps() {
        let assignment = Assignment {
            assignment_id: "a-1".into(),
            department_code: "zw-sanitation".into(),
            status: AssignmentStatus::Acknowledged as i32,
            role: AssignmentRole::Lead as i32,
            responsible_person: "王主任".into(),
            ..Default::default()
        };
        let text = super::assignment(&assignment, Format::Text);
        let status_line = text
            .lines()
            .find(|line| line.starts_with("status "))
            .expect("a status line");
        assert!(status_line.ends_with(" ACKNOWLEDGED"), "{text}");
        let columns: std::collections::BTreeSet<usize> = text
            .lines()
            .filter(|line| line.is_ascii())
            .map(|line| {
                line.find("  ").map_or(0, |at| {
                    at + line[at..].len() - line[at..].trim_start().len()
                })
            })
            .collect();
        assert_eq!(columns.len(), 1, "values start in one column: {text}");
        assert!(!text.contains("Assignment {"), "{text}");
        let json: Value =
            serde_json::from_str(&super::assignment(&assignment, Format::Json)).expect("json");
        assert_eq!(json["status"], "ACKNOWLEDGED");
        assert_eq!(json["role"], "LEAD");
    }
}
