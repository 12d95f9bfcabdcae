//! `whistle evaluation ...` (close, reopen, rebuild) and the export of a closed period's
//! scorecards (`whistle scorecard --period 2026-11 --format csv|json`).

use crate::client::{Endpoints, status_error};
use clap::Subcommand;
use serde_json::{Value, json};
use std::sync::Arc;
use whistle_proto::evaluation::{
    ClosePeriodRequest, GetPeriodScorecardsRequest, PeriodScorecards, ReopenPeriodRequest,
    Scorecard,
};

/// Operating evaluation's periods and database.
#[derive(Debug, Subcommand)]
pub enum EvaluationCommand {
    /// Close a finished period: freeze every department's card, publish them with their SHA-256.
    Close {
        /// "2026-11", "2026-Q4" or "2026"
        #[arg(long)]
        period: String,
    },
    /// Reopen a closed period (logged); its cards are recomputed and republished at the next close.
    Reopen {
        #[arg(long)]
        period: String,
        /// Why; logged and published with evaluation.v1.period_reopened.
        #[arg(long)]
        reason: String,
    },
    /// Replay the JetStream history into an EMPTY evaluation database, without touching the live
    /// consumers; then serve it with whistle-evaluation (docs/evaluation.md, "Rebuild").
    Rebuild {
        #[arg(
            long,
            env = "WHISTLE_NATS_URL",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats_url: String,
        /// The database to fill, e.g. sqlite://data/evaluation-rebuilt.sqlite?mode=rwc or
        /// postgres://postgres@127.0.0.1/whistle_evaluation_rebuilt
        #[arg(long)]
        into: String,
    },
}

/// Runs one `whistle evaluation` command.
pub async fn run(endpoints: &Endpoints, command: EvaluationCommand) -> anyhow::Result<()> {
    match command {
        EvaluationCommand::Close { period } => {
            let closed = endpoints
                .evaluation()
                .await?
                .close_period(ClosePeriodRequest {
                    period: period.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "period {} closed at {}: {} departments, sha256 {}",
                closed.period,
                closed_at(&closed),
                closed.scorecards.len(),
                closed.sha256
            );
            println!(
                "export it with: whistle scorecard --period {} --format csv",
                closed.period
            );
        }
        EvaluationCommand::Reopen { period, reason } => {
            endpoints
                .evaluation()
                .await?
                .reopen_period(ReopenPeriodRequest {
                    period: period.clone(),
                    reason,
                })
                .await
                .map_err(status_error)?;
            println!(
                "period {period} reopened; close it again with: whistle evaluation close --period {period}"
            );
        }
        EvaluationCommand::Rebuild { nats_url, into } => {
            let clock: whistle_platform::clock::SharedClock =
                Arc::new(whistle_platform::clock::SystemClock);
            let report = whistle_evaluation::rebuild::rebuild(&nats_url, &into, clock).await?;
            println!(
                "rebuilt {into} from {} messages in {:.1} s: {} applied, {} duplicates, {} rejected",
                report.messages,
                report.elapsed.as_secs_f64(),
                report.applied,
                report.duplicates,
                report.rejected
            );
        }
    }
    Ok(())
}

fn closed_at(period: &PeriodScorecards) -> String {
    period
        .closed_at
        .as_ref()
        .and_then(whistle_platform::clock::from_proto_timestamp)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Export formats of a closed period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
}

impl ExportFormat {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value {
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            other => anyhow::bail!("--format must be csv or json, got {other:?}"),
        }
    }
}

/// Fetches a period's cards and exports them; refused while the period is open (a district
/// office files frozen cards only).
pub async fn export_period(
    endpoints: &Endpoints,
    period: &str,
    department: Option<&str>,
    format: ExportFormat,
) -> anyhow::Result<String> {
    let cards = endpoints
        .evaluation()
        .await?
        .get_period_scorecards(GetPeriodScorecardsRequest {
            period: period.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !cards.closed {
        anyhow::bail!(
            "period {} is not closed; close it first: whistle evaluation close --period {}",
            cards.period,
            cards.period
        );
    }
    export(&cards, department, format)
}

const CSV_HEADER: [&str; 34] = [
    "period",
    "department_code",
    "rated",
    "composite",
    "report_rate",
    "on_site_rate",
    "resolution_rate",
    "on_time_rate",
    "rework_rate",
    "cooperation",
    "satisfaction",
    "whistled",
    "acknowledged",
    "acknowledged_within_limit",
    "required_on_site",
    "on_site_within_limit",
    "resolved",
    "resolved_within_limit",
    "verified",
    "returned",
    "returns_accepted",
    "returns_rejected",
    "deferred",
    "reopened",
    "due_in_period",
    "overdue",
    "escalated",
    "cooperation_ratings",
    "satisfaction_callbacks",
    "scoring_config",
    "closed_at",
    "sha256",
    "after_close",
    "frozen",
];

/// A closed period's cards as CSV (a header row, one department per line, each with the close
/// time and the period's SHA-256) or JSON (the cards, and the canonical serialisation the SHA-256
/// covers, so the file can be verified).
pub fn export(
    cards: &PeriodScorecards,
    department: Option<&str>,
    format: ExportFormat,
) -> anyhow::Result<String> {
    let selected: Vec<&Scorecard> = cards
        .scorecards
        .iter()
        .filter(|card| department.is_none_or(|code| card.department_code == code))
        .collect();
    if let Some(code) = department
        && selected.is_empty()
    {
        anyhow::bail!("department {code} has no card in period {}", cards.period);
    }
    let closed_at = closed_at(cards);
    match format {
        ExportFormat::Json => {
            let value = json!({
                "period": cards.period,
                "closed": cards.closed,
                "closed_at": closed_at,
                "sha256": cards.sha256,
                "frozen_scorecards_json": cards.frozen_scorecards_json,
                "scorecards": selected.iter().map(|card| card_json(card)).collect::<Vec<_>>(),
            });
            Ok(serde_json::to_string_pretty(&value)? + "\n")
        }
        ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(CSV_HEADER)?;
            let number =
                |value: Option<f64>| value.map(|value| value.to_string()).unwrap_or_default();
            for card in selected {
                let counts = card.counts.unwrap_or_default();
                let indicators = card.indicators.unwrap_or_default();
                writer.write_record([
                    card.period.clone(),
                    card.department_code.clone(),
                    card.rated.to_string(),
                    number(card.composite),
                    number(indicators.report_rate),
                    number(indicators.on_site_rate),
                    number(indicators.resolution_rate),
                    number(indicators.on_time_rate),
                    number(indicators.rework_rate),
                    number(indicators.cooperation),
                    number(indicators.satisfaction),
                    counts.whistled.to_string(),
                    counts.acknowledged.to_string(),
                    counts.acknowledged_within_limit.to_string(),
                    counts.required_on_site.to_string(),
                    counts.on_site_within_limit.to_string(),
                    counts.resolved.to_string(),
                    counts.resolved_within_limit.to_string(),
                    counts.verified.to_string(),
                    counts.returned.to_string(),
                    counts.returns_accepted.to_string(),
                    counts.returns_rejected.to_string(),
                    counts.deferred.to_string(),
                    counts.reopened.to_string(),
                    counts.due_in_period.to_string(),
                    counts.overdue.to_string(),
                    counts.escalated.to_string(),
                    counts.cooperation_ratings.to_string(),
                    counts.satisfaction_callbacks.to_string(),
                    card.scoring_config.clone(),
                    closed_at.clone(),
                    card.sha256.clone(),
                    card.after_close.to_string(),
                    card.frozen.to_string(),
                ])?;
            }
            Ok(String::from_utf8(writer.into_inner()?)?)
        }
    }
}

fn card_json(card: &Scorecard) -> Value {
    let counts = card.counts.unwrap_or_default();
    let indicators = card.indicators.unwrap_or_default();
    json!({
        "department_code": card.department_code,
        "period": card.period,
        "rated": card.rated,
        "composite": card.composite,
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
            "returns_rejected": counts.returns_rejected,
            "deferred": counts.deferred,
            "reopened": counts.reopened,
            "due_in_period": counts.due_in_period,
            "overdue": counts.overdue,
            "escalated": counts.escalated,
            "cooperation_ratings": counts.cooperation_ratings,
            "satisfaction_callbacks": counts.satisfaction_callbacks,
        },
        "scoring_config": card.scoring_config,
        "frozen": card.frozen,
        "after_close": card.after_close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use whistle_proto::evaluation::{Indicators, ScorecardCounts};

    fn period() -> PeriodScorecards {
        let card = |department_code: &str, composite: Option<f64>| Scorecard {
            department_code: department_code.into(),
            period: "2026-10".into(),
            counts: Some(ScorecardCounts {
                whistled: 3,
                overdue: 1,
                ..ScorecardCounts::default()
            }),
            indicators: Some(Indicators {
                report_rate: Some(2.0 / 3.0),
                ..Indicators::default()
            }),
            composite,
            rated: composite.is_some(),
            scoring_config: "scoring-3f2a09c1d4e5b678".into(),
            frozen: true,
            sha256: "ab".repeat(32),
            after_close: 1,
            ..Scorecard::default()
        };
        PeriodScorecards {
            period: "2026-10".into(),
            closed: true,
            closed_at: Some(prost_types::Timestamp {
                seconds: 1_793_491_200,
                nanos: 0,
            }),
            sha256: "ab".repeat(32),
            frozen_scorecards_json: "[]".into(),
            scorecards: vec![card("zw-housing", Some(81.5)), card("zw-water", None)],
        }
    }

    #[test]
    fn the_csv_has_a_header_and_one_department_per_line() {
        let csv = export(&period(), None, ExportFormat::Csv).expect("csv");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert!(lines[1].starts_with("2026-10,zw-housing,true,81.5,0.6666666666666666,,"));
        assert!(lines[2].starts_with("2026-10,zw-water,false,,"));
        let closed_at = "2026-11-01T00:00:00.000Z";
        assert!(lines[1].ends_with(&format!("{closed_at},{},1,true", "ab".repeat(32))));
        let one = export(&period(), Some("zw-water"), ExportFormat::Csv).expect("one");
        assert_eq!(one.lines().count(), 2);
        assert!(export(&period(), Some("zw-nobody"), ExportFormat::Csv).is_err());
    }

    #[test]
    fn the_json_carries_what_the_hash_covers() {
        let json = export(&period(), None, ExportFormat::Json).expect("json");
        let value: Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(value["sha256"], "ab".repeat(32));
        assert_eq!(value["frozen_scorecards_json"], "[]");
        assert_eq!(value["scorecards"][0]["counts"]["overdue"], 1);
        assert_eq!(value["scorecards"][1]["composite"], Value::Null);
    }
}
