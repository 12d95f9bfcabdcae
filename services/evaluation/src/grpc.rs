//! `EvaluationService` over gRPC: request validation, proto <-> domain conversion.

use crate::domain::{
    self, AssignmentFacts, CallbackResult, CooperationRating, DepartmentLevel, Explained,
    FrozenCard, Period, PeriodBounds, RankingCandidate, SatisfactionCallback, Scoring, UtcOffset,
};
use crate::error::EvaluationError;
use crate::storage::{self, callback, period_state, rating};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use whistle_platform::auth::Caller;
use whistle_platform::clock::{SharedClock, from_millis, to_millis, to_proto_timestamp};
use whistle_platform::envelope::{self, Event, Payload};
use whistle_platform::outbox::{self, OutboxSignal};
use whistle_platform::validation::{FieldError, LimitsConfig};
use whistle_proto::evaluation::evaluation_service_server::EvaluationService;
use whistle_proto::evaluation::{
    ClosePeriodRequest, CompositePart, ExplainScoreRequest, ExplainScoreResponse,
    ExplainedAssignment, GetPeriodScorecardsRequest, GetRankingRequest, GetScorecardRequest,
    Indicators, PeriodScorecards, Ranking, RankingEntry, RateCooperationRequest,
    RateCooperationResponse, Rater, RecordSatisfactionRequest, RecordSatisfactionResponse,
    ReopenPeriodRequest, ReopenPeriodResponse, Satisfaction, Scorecard, ScorecardCounts,
};
use whistle_proto::events::{
    EvaluationCooperationRated, EvaluationPeriodClosed, EvaluationPeriodReopened,
    EvaluationSatisfactionRecorded,
};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-evaluation";

/// The gRPC face of evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationGrpc {
    /// The writer: ratings, call-backs, closes (and every consumer).
    pub db: DatabaseConnection,
    /// Reads that may span a period (cards, rankings, explanations): on SQLite a read-only pool
    /// beside the writer, so a card over a long period does not hold the consumers up.
    pub reader: DatabaseConnection,
    pub clock: SharedClock,
    pub utc_offset: UtcOffset,
    pub scoring: Scoring,
    /// Lengths every request field is held to.
    pub limits: LimitsConfig,
    /// Wakes the outbox relay after a commit that enqueued events.
    pub signal: OutboxSignal,
}

/// One department's period, every assignment decided (for explanations).
struct DepartmentPeriod {
    assignments: Vec<AssignmentFacts>,
    ratings: Vec<CooperationRating>,
    callbacks: Vec<SatisfactionCallback>,
    computed_at_ms: i64,
}

fn field_error(name: &'static str) -> impl Fn(String) -> FieldError {
    move |reason| FieldError::new(name, reason)
}

fn parse_period(limits: &LimitsConfig, value: &str) -> Result<Period, FieldError> {
    limits.check_code("period", value)?;
    Period::parse(value).map_err(field_error("period"))
}

fn parse_department_code(limits: &LimitsConfig, value: &str) -> Result<String, FieldError> {
    limits.check_code("department_code", value)?;
    domain::parse_department_code(value).map_err(field_error("department_code"))
}

/// Checks a caller's id against `limits.id_chars`, then its shape.
fn parse_identifier(
    limits: &LimitsConfig,
    field: &'static str,
    value: &str,
) -> Result<String, FieldError> {
    limits.check_id(field, value)?;
    domain::parse_identifier(value).map_err(field_error(field))
}

fn scorecard_counts(counts: &domain::Counts) -> ScorecardCounts {
    ScorecardCounts {
        whistled: counts.whistled,
        acknowledged: counts.acknowledged,
        acknowledged_within_limit: counts.acknowledged_within_limit,
        required_on_site: counts.required_on_site,
        on_site_within_limit: counts.on_site_within_limit,
        resolved: counts.resolved,
        resolved_within_limit: counts.resolved_within_limit,
        verified: counts.verified,
        returned: counts.returned,
        returns_accepted: counts.returns_accepted,
        deferred: counts.deferred,
        reopened: counts.reopened,
        due_in_period: counts.due_in_period,
        cooperation_ratings: counts.cooperation_ratings,
        satisfaction_callbacks: counts.satisfaction_callbacks,
        returns_rejected: counts.returns_rejected,
        overdue: counts.overdue,
        escalated: counts.escalated,
    }
}

fn indicators(indicators: &domain::Indicators) -> Indicators {
    Indicators {
        report_rate: indicators.report_rate,
        on_site_rate: indicators.on_site_rate,
        resolution_rate: indicators.resolution_rate,
        on_time_rate: indicators.on_time_rate,
        rework_rate: indicators.rework_rate,
        cooperation: indicators.cooperation,
        satisfaction: indicators.satisfaction,
    }
}

/// A cooperation rating that passed every check.
#[derive(Debug)]
pub struct CheckedRating {
    pub assignment_id: String,
    pub rater: domain::Rater,
    pub rater_id: String,
    pub score: u8,
    pub comment: String,
}

/// Checks a `RateCooperation` against the limits and the contract.
pub fn check_rating(
    limits: &LimitsConfig,
    request: &RateCooperationRequest,
) -> Result<CheckedRating, FieldError> {
    let assignment_id = parse_identifier(limits, "assignment_id", &request.assignment_id)?;
    let (rater, rater_id) = rater_of(limits, request)?;
    let score = domain::parse_cooperation_score(request.score).map_err(field_error("score"))?;
    limits.check_text("comment", &request.comment)?;
    Ok(CheckedRating {
        assignment_id,
        rater,
        rater_id,
        score,
        comment: request.comment.clone(),
    })
}

/// Who is rating, and as what: the one place that decides it. Today the request names the rater
/// (`rater`, `rater_id`: a street's or community's division code); once callers carry
/// credentials, this reads them instead. Whether that rater may rate the assignment's case is
/// [`domain::may_rate`]'s rule.
pub fn rater_of(
    limits: &LimitsConfig,
    request: &RateCooperationRequest,
) -> Result<(domain::Rater, String), FieldError> {
    let rater = match Rater::try_from(request.rater) {
        Ok(Rater::Street) => domain::Rater::Street,
        Ok(Rater::Community) => domain::Rater::Community,
        Ok(Rater::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "rater",
                "required: RATER_STREET or RATER_COMMUNITY",
            ));
        }
    };
    limits.check_id("rater_id", &request.rater_id)?;
    // the registry's codes: a street extends its district's 6 digits by 3, a community by 3 more
    let (digits, example) = match rater {
        domain::Rater::Street => (9, "420303003"),
        domain::Rater::Community => (12, "420303003001"),
    };
    let well_formed = request.rater_id.len() == digits
        && request.rater_id.bytes().all(|byte| byte.is_ascii_digit());
    if !well_formed {
        return Err(FieldError::new(
            "rater_id",
            format!(
                "must be the {} code of {digits} digits such as \"{example}\", got {:?}",
                rater.as_str(),
                request.rater_id
            ),
        ));
    }
    Ok((rater, request.rater_id.clone()))
}

/// A resident call-back that passed every check.
#[derive(Debug)]
pub struct CheckedCallback {
    pub case_id: String,
    pub callback_id: String,
    pub result: CallbackResult,
    pub note: String,
}

/// Checks a `RecordSatisfaction` against the limits and the contract.
pub fn check_callback(
    limits: &LimitsConfig,
    request: &RecordSatisfactionRequest,
) -> Result<CheckedCallback, FieldError> {
    let case_id = parse_identifier(limits, "case_id", &request.case_id)?;
    let callback_id = parse_identifier(limits, "callback_id", &request.callback_id)?;
    let result = match Satisfaction::try_from(request.result) {
        Ok(Satisfaction::Satisfied) => CallbackResult::Satisfied,
        Ok(Satisfaction::BasicallySatisfied) => CallbackResult::BasicallySatisfied,
        Ok(Satisfaction::Dissatisfied) => CallbackResult::Dissatisfied,
        Ok(Satisfaction::Unspecified) | Err(_) => {
            return Err(FieldError::new(
                "result",
                "required: SATISFACTION_SATISFIED, SATISFACTION_BASICALLY_SATISFIED or SATISFACTION_DISSATISFIED",
            ));
        }
    };
    limits.check_text("note", &request.note)?;
    Ok(CheckedCallback {
        case_id,
        callback_id,
        result,
        note: request.note.clone(),
    })
}

/// Checks a `GetScorecard`: the department and the period.
pub fn check_scorecard(
    limits: &LimitsConfig,
    request: &GetScorecardRequest,
) -> Result<(String, Period, Option<String>), FieldError> {
    let department_code = parse_department_code(limits, &request.department_code)?;
    let period = parse_period(limits, &request.period)?;
    Ok((
        department_code,
        period,
        parse_scope(limits, "region_code", &request.region_code)?,
    ))
}

/// A street or community scope: a division code, empty for every case.
fn parse_scope(
    limits: &LimitsConfig,
    field: &'static str,
    value: &str,
) -> Result<Option<String>, FieldError> {
    limits.check_code(field, value)?;
    domain::parse_region_filter(value).map_err(field_error(field))
}

/// Checks a `GetRanking`: the period and the optional level and region filters.
pub fn check_ranking(
    limits: &LimitsConfig,
    request: &GetRankingRequest,
) -> Result<RankingQuery, FieldError> {
    let period = parse_period(limits, &request.period)?;
    limits.check_code("level", &request.level)?;
    let level = domain::parse_level_filter(&request.level).map_err(field_error("level"))?;
    limits.check_code("region_code", &request.region_code)?;
    let region =
        domain::parse_region_filter(&request.region_code).map_err(field_error("region_code"))?;
    let case_region = parse_scope(limits, "case_region_code", &request.case_region_code)?;
    Ok(RankingQuery {
        period,
        level,
        region,
        case_region,
    })
}

/// A checked `GetRanking`.
#[derive(Debug)]
pub struct RankingQuery {
    pub period: Period,
    /// The departments' level.
    pub level: Option<DepartmentLevel>,
    /// The departments' seat (a division code prefix).
    pub region: Option<String>,
    /// Only the cases in this street or community (a division code prefix).
    pub case_region: Option<String>,
}

/// Checks an `ExplainScore`: the department, the period and the indicator.
pub fn check_explanation(
    limits: &LimitsConfig,
    request: &ExplainScoreRequest,
) -> Result<(String, Period, Explained), FieldError> {
    let department_code = parse_department_code(limits, &request.department_code)?;
    let period = parse_period(limits, &request.period)?;
    limits.check_code("indicator", &request.indicator)?;
    let explained = Explained::parse(&request.indicator).map_err(field_error("indicator"))?;
    Ok((department_code, period, explained))
}

impl EvaluationGrpc {
    async fn rate(&self, request: RateCooperationRequest) -> Result<(), EvaluationError> {
        let CheckedRating {
            assignment_id,
            rater,
            rater_id,
            score,
            comment,
        } = check_rating(&self.limits, &request)?;

        let transaction = self.db.begin().await?;
        let Some(assignment) = storage::find_assignment(&transaction, &assignment_id).await? else {
            return Err(EvaluationError::NotFound(format!(
                "assignment {assignment_id} not found"
            )));
        };
        // the rating's row is merged like the consumers merge theirs: under the case's lock
        let key = storage::case_lock_key(&assignment.case_id);
        whistle_platform::db::lock_keys(&transaction, [key.as_str()]).await?;
        // cooperation is rated on what the department did: not before it acknowledged, checked
        // in, resolved or returned
        if !domain::department_acted(&assignment) {
            return Err(EvaluationError::FailedPrecondition(format!(
                "assignment {assignment_id}: the department has not acted yet, nothing to rate"
            )));
        }
        let Some(region) = storage::case_region(&transaction, &assignment.case_id).await? else {
            return Err(EvaluationError::FailedPrecondition(format!(
                "assignment {assignment_id}: the case's street and community are not known yet"
            )));
        };
        domain::may_rate(rater, &rater_id, &region)
            .map_err(|reason| EvaluationError::PermissionDenied(format!("rater_id: {reason}")))?;
        let rated_at = self.clock.now();
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            &assignment.case_id,
            0,
            None,
            Payload::EvaluationCooperationRated(EvaluationCooperationRated {
                assignment_id: assignment_id.clone(),
                rater: rater.as_str().to_string(),
                rater_id: rater_id.clone(),
                score: u32::from(score),
                comment: comment.clone(),
                rated_at: Some(to_proto_timestamp(rated_at)),
            }),
        );
        storage::apply_rating(
            &transaction,
            &event.event_id,
            rating::Model {
                assignment_id: assignment_id.clone(),
                rater: rater.as_str().to_string(),
                rater_id: rater_id.clone(),
                score: i32::from(score),
                comment,
                rated_at_ms: to_millis(rated_at),
            },
        )
        .await?;
        let staged = self.publish(&transaction, &event).await?;
        transaction.commit().await?;
        staged.committed();
        tracing::info!(%assignment_id, rater = rater.as_str(), %rater_id, score, "cooperation rated");
        Ok(())
    }

    async fn record_callback(
        &self,
        request: RecordSatisfactionRequest,
    ) -> Result<(), EvaluationError> {
        let CheckedCallback {
            case_id,
            callback_id,
            result,
            note,
        } = check_callback(&self.limits, &request)?;

        let transaction = self.db.begin().await?;
        if let Some(existing) = storage::find_callback(&transaction, &callback_id).await? {
            if existing.case_id == case_id
                && existing.result == result.as_str()
                && existing.note == note
            {
                return Ok(());
            }
            return Err(EvaluationError::AlreadyExists(format!(
                "callback_id: {callback_id:?} was already used for a different call-back"
            )));
        }
        if !storage::case_known(&transaction, &case_id).await? {
            return Err(EvaluationError::NotFound(format!(
                "case {case_id} not found"
            )));
        }
        // residents are called back on what was done: only once the case is closed
        if !storage::case_closed(&transaction, &case_id).await? {
            return Err(EvaluationError::FailedPrecondition(format!(
                "case {case_id} is not closed: call-backs are recorded on closed cases only"
            )));
        }
        let recorded_at = self.clock.now();
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            &case_id,
            0,
            None,
            Payload::EvaluationSatisfactionRecorded(EvaluationSatisfactionRecorded {
                callback_id: callback_id.clone(),
                result: result.as_str().to_string(),
                note: note.clone(),
                recorded_at: Some(to_proto_timestamp(recorded_at)),
            }),
        );
        storage::insert_callback(
            &transaction,
            callback::Model {
                callback_id: callback_id.clone(),
                case_id: case_id.clone(),
                result: result.as_str().to_string(),
                note,
                recorded_at_ms: to_millis(recorded_at),
            },
        )
        .await?;
        let staged = self.publish(&transaction, &event).await?;
        transaction.commit().await?;
        staged.committed();
        tracing::info!(%case_id, %callback_id, result = result.as_str(), "satisfaction recorded");
        Ok(())
    }

    /// The department's assignments in the period, each decided, with their ratings and call-backs.
    async fn department_period(
        &self,
        department_code: &str,
        period: Period,
    ) -> Result<DepartmentPeriod, EvaluationError> {
        let bounds = period.bounds(self.utc_offset);
        let transaction = self.reader.begin().await?;
        if !storage::department_known(&transaction, department_code).await? {
            return Err(EvaluationError::NotFound(format!(
                "department {department_code} not found"
            )));
        }
        let assignments =
            storage::assignments_whistled_in(&transaction, Some(department_code), bounds).await?;
        let assignment_ids: Vec<String> = assignments
            .iter()
            .map(|assignment| assignment.assignment_id.clone())
            .collect();
        let case_ids: Vec<String> = assignments
            .iter()
            .map(|assignment| assignment.case_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ratings = storage::ratings_of(&transaction, &assignment_ids).await?;
        let callbacks = storage::callbacks_on(&transaction, &case_ids).await?;
        transaction.commit().await?;
        Ok(DepartmentPeriod {
            assignments,
            ratings,
            callbacks,
            computed_at_ms: to_millis(self.clock.now()),
        })
    }

    async fn scorecard(&self, request: GetScorecardRequest) -> Result<Scorecard, EvaluationError> {
        let (department_code, period, scope) = check_scorecard(&self.limits, &request)?;
        if scope.is_none() {
            let closed = storage::find_period(&self.reader, &period.label()).await?;
            if let Some(closed) = closed.filter(|closed| closed.closed) {
                return self
                    .frozen_scorecard(&closed, &department_code, period)
                    .await;
            }
        }
        self.live_scorecard(&department_code, period, scope.as_deref())
            .await
    }

    async fn live_scorecard(
        &self,
        department_code: &str,
        period: Period,
        scope: Option<&str>,
    ) -> Result<Scorecard, EvaluationError> {
        let department_code = department_code.to_string();
        let bounds = period.bounds(self.utc_offset);
        // one snapshot: the department check and the sums
        let transaction = self.reader.begin().await?;
        if !storage::department_known(&transaction, &department_code).await? {
            return Err(EvaluationError::NotFound(format!(
                "department {department_code} not found"
            )));
        }
        let computed_at_ms = to_millis(self.clock.now());
        let figures = crate::cards::live_figures(
            &transaction,
            Some(&department_code),
            bounds,
            scope,
            computed_at_ms,
            &self.scoring,
        )
        .await?
        .remove(&department_code)
        .unwrap_or_else(|| self.unwhistled_figures());
        transaction.commit().await?;
        Ok(Scorecard {
            department_code,
            period: period.label(),
            period_start: Some(to_proto_timestamp(from_millis(bounds.start_ms))),
            period_end: Some(to_proto_timestamp(from_millis(bounds.end_ms))),
            counts: Some(scorecard_counts(&figures.counts)),
            indicators: Some(indicators(&figures.indicators)),
            composite: figures.composite,
            computed_at: Some(to_proto_timestamp(from_millis(computed_at_ms))),
            rated: figures.rated,
            scoring_config: self.scoring.fingerprint(),
            region_code: scope.unwrap_or_default().to_string(),
            frozen: false,
            closed_at: None,
            sha256: String::new(),
            after_close: 0,
        })
    }

    async fn ranking(&self, request: GetRankingRequest) -> Result<Ranking, EvaluationError> {
        let RankingQuery {
            period,
            level,
            region,
            case_region,
        } = check_ranking(&self.limits, &request)?;
        let bounds = period.bounds(self.utc_offset);

        let now_ms = to_millis(self.clock.now());
        let transaction = self.reader.begin().await?;
        let departments = storage::departments(&transaction).await?;
        let mut by_department = crate::cards::live_figures(
            &transaction,
            None,
            bounds,
            case_region.as_deref(),
            now_ms,
            &self.scoring,
        )
        .await?;
        transaction.commit().await?;
        // Registry departments that match the filters; departments seen only in events have no
        // level or region, so they are ranked only when nothing is filtered.
        let mut ranked_codes: Vec<String> = departments
            .iter()
            .filter(|department| level.is_none() || department.level == level)
            .filter(|department| {
                region
                    .as_deref()
                    .is_none_or(|prefix| department.region_code.starts_with(prefix))
            })
            .map(|department| department.code.clone())
            .collect();
        if level.is_none() && region.is_none() {
            let registered: BTreeSet<&str> = departments
                .iter()
                .map(|department| department.code.as_str())
                .collect();
            ranked_codes.extend(
                by_department
                    .keys()
                    .filter(|code| !registered.contains(code.as_str()))
                    .cloned(),
            );
        }
        let candidates = ranked_codes
            .into_iter()
            .map(|department_code| {
                let figures = by_department
                    .remove(&department_code)
                    .unwrap_or_else(|| self.unwhistled_figures());
                RankingCandidate {
                    department_code,
                    composite: figures.composite,
                    whistled: figures.counts.whistled,
                }
            })
            .collect();
        let entries = domain::rank(candidates)
            .into_iter()
            .map(|ranked| RankingEntry {
                rank: ranked.rank,
                department_code: ranked.department_code,
                composite: ranked.composite,
                whistled: ranked.whistled,
            })
            .collect();
        Ok(Ranking {
            period: period.label(),
            entries,
        })
    }

    async fn explain(
        &self,
        request: ExplainScoreRequest,
    ) -> Result<ExplainScoreResponse, EvaluationError> {
        let (department_code, period, explained) = check_explanation(&self.limits, &request)?;
        let scored = self.department_period(&department_code, period).await?;
        let explanation = domain::explain_score(
            explained,
            &scored.assignments,
            &scored.ratings,
            &scored.callbacks,
            scored.computed_at_ms,
            &self.scoring,
        );
        let explained_ids: Vec<String> = explanation
            .assignments
            .iter()
            .map(|assignment| assignment.assignment_id.clone())
            .collect();
        let mut milestones = storage::milestones_of(&self.reader, &explained_ids).await?;
        let ids = |pick: fn(&domain::ExplainedAssignment) -> bool| {
            explanation
                .assignments
                .iter()
                .filter(|assignment| pick(assignment))
                .map(|assignment| assignment.assignment_id.clone())
                .collect::<Vec<_>>()
        };
        Ok(ExplainScoreResponse {
            numerator_assignment_ids: ids(|assignment| assignment.numerator),
            denominator_assignment_ids: ids(|assignment| assignment.denominator),
            assignments: explanation
                .assignments
                .iter()
                .map(|assignment| ExplainedAssignment {
                    assignment_id: assignment.assignment_id.clone(),
                    numerator: assignment.numerator,
                    denominator: assignment.denominator,
                    deciding_event_ids: assignment.deciding_event_ids.clone(),
                    milestone_event_ids: milestones
                        .remove(&assignment.assignment_id)
                        .unwrap_or_default(),
                })
                .collect(),
            value: explanation.value,
            composite_parts: explanation
                .parts
                .iter()
                .map(|part| CompositePart {
                    indicator: part.indicator.to_string(),
                    weight: part.weight,
                    value: part.value,
                    effective_weight: part.effective_weight,
                })
                .collect(),
            callback_ids: explanation.callback_ids,
            rated: explanation.rated,
            scoring_config: self.scoring.fingerprint(),
        })
    }
}

fn timestamp(at_ms: i64) -> Option<prost_types::Timestamp> {
    Some(to_proto_timestamp(from_millis(at_ms)))
}

/// The gRPC card of a frozen one.
fn scorecard_of_frozen(
    card: &FrozenCard,
    bounds: PeriodBounds,
    closed: &period_state::Model,
    after_close: u64,
) -> Scorecard {
    let counts = &card.counts;
    let indicators = &card.indicators;
    Scorecard {
        department_code: card.department_code.clone(),
        period: card.period.clone(),
        period_start: timestamp(bounds.start_ms),
        period_end: timestamp(bounds.end_ms),
        counts: Some(ScorecardCounts {
            whistled: counts.whistled,
            acknowledged: counts.acknowledged,
            acknowledged_within_limit: counts.acknowledged_within_limit,
            required_on_site: counts.required_on_site,
            on_site_within_limit: counts.on_site_within_limit,
            resolved: counts.resolved,
            resolved_within_limit: counts.resolved_within_limit,
            verified: counts.verified,
            returned: counts.returned,
            returns_accepted: counts.returns_accepted,
            deferred: counts.deferred,
            reopened: counts.reopened,
            due_in_period: counts.due_in_period,
            cooperation_ratings: counts.cooperation_ratings,
            satisfaction_callbacks: counts.satisfaction_callbacks,
            returns_rejected: counts.returns_rejected,
            overdue: counts.overdue,
            escalated: counts.escalated,
        }),
        indicators: Some(Indicators {
            report_rate: indicators.report_rate,
            on_site_rate: indicators.on_site_rate,
            resolution_rate: indicators.resolution_rate,
            on_time_rate: indicators.on_time_rate,
            rework_rate: indicators.rework_rate,
            cooperation: indicators.cooperation,
            satisfaction: indicators.satisfaction,
        }),
        composite: card.composite,
        computed_at: closed.closed_at_ms.and_then(timestamp),
        rated: card.rated,
        scoring_config: card.scoring_config.clone(),
        region_code: String::new(),
        frozen: true,
        closed_at: closed.closed_at_ms.and_then(timestamp),
        sha256: closed.sha256.clone(),
        after_close,
    }
}

/// Closes every month automatically `close_after_days` after it ended (the 申诉期), once: a month
/// that was ever closed (and perhaps reopened) is left to the operator. Checks every minute.
pub async fn close_periods_automatically(
    service: EvaluationGrpc,
    close_after_days: u32,
    shutdown: CancellationToken,
) {
    if close_after_days == 0 {
        return;
    }
    // The period's row appears when evaluation's own consumer applies the close event, which can
    // take longer than a minute under load: what this loop closed is remembered here, so it never
    // asks for the same close twice.
    let mut closed_here = std::collections::HashSet::new();
    loop {
        let now_ms = to_millis(service.clock.now());
        let window_ms = i64::from(close_after_days) * 86_400_000;
        if let Some(period) =
            domain::latest_month_ended_before(now_ms - window_ms, service.utc_offset)
            && !closed_here.contains(&period.label())
        {
            match storage::find_period(&service.db, &period.label()).await {
                Ok(None) => match service.close(period, "automatic").await {
                    Ok(_) => {
                        closed_here.insert(period.label());
                    }
                    Err(EvaluationError::FailedPrecondition(reason)) => {
                        tracing::debug!(period = %period.label(), %reason, "not closed")
                    }
                    Err(error) => {
                        tracing::warn!(period = %period.label(), %error, "automatic close failed")
                    }
                },
                Ok(Some(_)) => {}
                Err(error) => tracing::warn!(%error, "cannot read closed periods"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

impl EvaluationGrpc {
    /// The card of a department nothing was whistled to in the period.
    fn unwhistled_figures(&self) -> domain::ScorecardFigures {
        domain::figures(&domain::CardSums::default(), &[], &[], &self.scoring)
    }

    /// Puts an event in evaluation's outbox inside `transaction`; hand it to the relay with
    /// [`outbox::Staging::committed`] once the transaction has committed.
    async fn publish(
        &self,
        transaction: &DatabaseTransaction,
        event: &Event,
    ) -> Result<outbox::Staging, EvaluationError> {
        let outbox_event = envelope::to_outbox(event)
            .map_err(|error| EvaluationError::Unexpected(error.to_string()))?;
        Ok(self
            .signal
            .enqueue_staged(transaction, vec![outbox_event], to_millis(self.clock.now()))
            .await?)
    }

    /// Every department's live figures for a period: the registry's departments and every
    /// department whistled in it.
    async fn all_live_cards(&self, period: Period) -> Result<Vec<FrozenCard>, EvaluationError> {
        let bounds = period.bounds(self.utc_offset);
        let now_ms = to_millis(self.clock.now());
        let transaction = self.reader.begin().await?;
        let departments = storage::departments(&transaction).await?;
        let mut by_department =
            crate::cards::live_figures(&transaction, None, bounds, None, now_ms, &self.scoring)
                .await?;
        transaction.commit().await?;
        for department in departments {
            by_department
                .entry(department.code)
                .or_insert_with(|| self.unwhistled_figures());
        }
        let label = period.label();
        let fingerprint = self.scoring.fingerprint();
        Ok(by_department
            .iter()
            .map(|(department_code, figures)| {
                FrozenCard::new(department_code, &label, figures, &fingerprint)
            })
            .collect())
    }

    /// Freezes the period's cards and publishes them with their SHA-256.
    async fn close(
        &self,
        period: Period,
        closed_by: &str,
    ) -> Result<PeriodScorecards, EvaluationError> {
        let label = period.label();
        let bounds = period.bounds(self.utc_offset);
        let now = self.clock.now();
        if to_millis(now) < bounds.end_ms {
            return Err(EvaluationError::FailedPrecondition(format!(
                "period {label} has not ended yet"
            )));
        }
        if let Some(existing) = storage::find_period(&self.db, &label).await?
            && existing.closed
        {
            return Err(EvaluationError::FailedPrecondition(format!(
                "period {label} is already closed (sha256 {})",
                existing.sha256
            )));
        }
        let cards = self.all_live_cards(period).await?;
        let frozen_scorecards_json = domain::canonical_json(&cards);
        let sha256 = domain::sha256_hex(&frozen_scorecards_json);
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            "",
            0,
            None,
            Payload::EvaluationPeriodClosed(EvaluationPeriodClosed {
                period: label.clone(),
                closed_at: Some(to_proto_timestamp(now)),
                sha256: sha256.clone(),
                frozen_scorecards_json: frozen_scorecards_json.clone(),
                scoring_config: self.scoring.fingerprint(),
                closed_by: closed_by.to_string(),
            }),
        );
        let closed = period_state::Model {
            period: label.clone(),
            closed: true,
            closed_at_ms: Some(to_millis(now)),
            sha256: sha256.clone(),
            frozen_scorecards_json,
            scoring_config: self.scoring.fingerprint(),
            reopen_reason: String::new(),
            last_event_at_ms: to_millis(now),
            last_event_id: event.event_id.clone(),
        };
        let transaction = self.db.begin().await?;
        storage::apply_period_event(&transaction, closed.clone()).await?;
        let staged = self.publish(&transaction, &event).await?;
        transaction.commit().await?;
        staged.committed();
        tracing::info!(period = %label, %sha256, departments = cards.len(), closed_by, "period closed");
        self.frozen_period(&closed, period).await
    }

    async fn reopen(&self, request: ReopenPeriodRequest) -> Result<(), EvaluationError> {
        let period = parse_period(&self.limits, &request.period)?;
        self.limits.check_text("reason", &request.reason)?;
        if request.reason.trim().is_empty() {
            return Err(EvaluationError::invalid(
                "reason",
                "required: why the period is reopened",
            ));
        }
        let label = period.label();
        let Some(existing) = storage::find_period(&self.db, &label)
            .await?
            .filter(|existing| existing.closed)
        else {
            return Err(EvaluationError::FailedPrecondition(format!(
                "period {label} is not closed"
            )));
        };
        let now = self.clock.now();
        let event = envelope::new_event(
            self.clock.as_ref(),
            SOURCE,
            "",
            0,
            None,
            Payload::EvaluationPeriodReopened(EvaluationPeriodReopened {
                period: label.clone(),
                reason: request.reason.clone(),
                reopened_at: Some(to_proto_timestamp(now)),
            }),
        );
        let transaction = self.db.begin().await?;
        storage::apply_period_event(
            &transaction,
            period_state::Model {
                period: label.clone(),
                closed: false,
                closed_at_ms: None,
                sha256: String::new(),
                frozen_scorecards_json: String::new(),
                scoring_config: String::new(),
                reopen_reason: request.reason.clone(),
                last_event_at_ms: to_millis(now),
                last_event_id: event.event_id.clone(),
            },
        )
        .await?;
        let staged = self.publish(&transaction, &event).await?;
        transaction.commit().await?;
        staged.committed();
        tracing::warn!(period = %label, reason = %request.reason, frozen_sha256 = %existing.sha256, "period reopened");
        Ok(())
    }

    /// How many events about each department's period assignments happened after the close: one
    /// department's with `department_code`.
    async fn after_close(
        &self,
        department_code: Option<&str>,
        period: Period,
        closed_at_ms: i64,
    ) -> Result<std::collections::BTreeMap<String, u64>, EvaluationError> {
        let bounds = period.bounds(self.utc_offset);
        Ok(crate::cards::after_close(&self.reader, department_code, bounds, closed_at_ms).await?)
    }

    async fn frozen_scorecard(
        &self,
        closed: &period_state::Model,
        department_code: &str,
        period: Period,
    ) -> Result<Scorecard, EvaluationError> {
        let cards = domain::parse_frozen_cards(&closed.frozen_scorecards_json)
            .map_err(EvaluationError::Unexpected)?;
        let Some(card) = cards
            .iter()
            .find(|card| card.department_code == department_code)
        else {
            return Err(EvaluationError::NotFound(format!(
                "department {department_code} has no card in closed period {}",
                closed.period
            )));
        };
        let closed_at_ms = closed.closed_at_ms.unwrap_or_default();
        let after_close = self
            .after_close(Some(department_code), period, closed_at_ms)
            .await?
            .remove(department_code)
            .unwrap_or_default();
        Ok(scorecard_of_frozen(
            card,
            period.bounds(self.utc_offset),
            closed,
            after_close,
        ))
    }

    async fn frozen_period(
        &self,
        closed: &period_state::Model,
        period: Period,
    ) -> Result<PeriodScorecards, EvaluationError> {
        let cards = domain::parse_frozen_cards(&closed.frozen_scorecards_json)
            .map_err(EvaluationError::Unexpected)?;
        let closed_at_ms = closed.closed_at_ms.unwrap_or_default();
        let after_close = self.after_close(None, period, closed_at_ms).await?;
        let mut scorecards = Vec::with_capacity(cards.len());
        for card in &cards {
            let after_close = after_close
                .get(&card.department_code)
                .copied()
                .unwrap_or_default();
            scorecards.push(scorecard_of_frozen(
                card,
                period.bounds(self.utc_offset),
                closed,
                after_close,
            ));
        }
        Ok(PeriodScorecards {
            period: closed.period.clone(),
            closed: true,
            closed_at: closed.closed_at_ms.and_then(timestamp),
            sha256: closed.sha256.clone(),
            frozen_scorecards_json: closed.frozen_scorecards_json.clone(),
            scorecards,
        })
    }

    /// A reader of a department's card sees it when its credential covers the scope asked for
    /// (`region_code`, a street or community) or, without a scope, the department's seat.
    async fn require_reader(
        &self,
        caller: &Caller,
        department_code: &str,
        region_code: &str,
    ) -> Result<(), Status> {
        if !region_code.is_empty() {
            return caller.require_region("region_code", region_code);
        }
        let departments = storage::departments(&self.reader)
            .await
            .map_err(EvaluationError::from)?;
        // an unknown department is NOT_FOUND later, for every caller alike
        match departments
            .iter()
            .find(|department| department.code == department_code)
        {
            Some(department) => caller
                .require_region("department_code", &department.region_code)
                .map_err(|_| {
                    Status::permission_denied(format!(
                        "department_code: {department_code} is seated in {} outside your region {}; \
                         ask for your region's view with region_code",
                        department.region_code, caller.region
                    ))
                }),
            None => Ok(()),
        }
    }

    /// A call-back operator records call-backs on cases of its region.
    async fn require_case_region(&self, caller: &Caller, case_id: &str) -> Result<(), Status> {
        if case_id.is_empty() {
            return Ok(());
        }
        let region = storage::case_region(&self.reader, case_id)
            .await
            .map_err(EvaluationError::from)?;
        match region {
            Some(region) if !region.street_code.is_empty() => {
                caller.require_region("case_id", &region.street_code)
            }
            // not known yet: NOT_FOUND or FAILED_PRECONDITION follow, for every caller alike
            _ => Ok(()),
        }
    }

    async fn period_scorecards(
        &self,
        request: GetPeriodScorecardsRequest,
    ) -> Result<PeriodScorecards, EvaluationError> {
        let period = parse_period(&self.limits, &request.period)?;
        if let Some(closed) = storage::find_period(&self.reader, &period.label())
            .await?
            .filter(|closed| closed.closed)
        {
            return self.frozen_period(&closed, period).await;
        }
        let cards = self.all_live_cards(period).await?;
        let mut scorecards = Vec::with_capacity(cards.len());
        for card in &cards {
            scorecards.push(
                self.live_scorecard(&card.department_code, period, None)
                    .await?,
            );
        }
        Ok(PeriodScorecards {
            period: period.label(),
            closed: false,
            closed_at: None,
            sha256: String::new(),
            frozen_scorecards_json: String::new(),
            scorecards,
        })
    }
}

#[tonic::async_trait]
impl EvaluationService for EvaluationGrpc {
    async fn close_period(
        &self,
        request: Request<ClosePeriodRequest>,
    ) -> Result<Response<PeriodScorecards>, Status> {
        let period =
            parse_period(&self.limits, &request.get_ref().period).map_err(EvaluationError::from)?;
        Ok(Response::new(self.close(period, "manual").await?))
    }

    async fn reopen_period(
        &self,
        request: Request<ReopenPeriodRequest>,
    ) -> Result<Response<ReopenPeriodResponse>, Status> {
        self.reopen(request.into_inner()).await?;
        Ok(Response::new(ReopenPeriodResponse {}))
    }

    async fn get_period_scorecards(
        &self,
        request: Request<GetPeriodScorecardsRequest>,
    ) -> Result<Response<PeriodScorecards>, Status> {
        Ok(Response::new(
            self.period_scorecards(request.into_inner()).await?,
        ))
    }

    async fn rate_cooperation(
        &self,
        request: Request<RateCooperationRequest>,
    ) -> Result<Response<RateCooperationResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        crate::policy::rater_from_credential(&caller, &mut request)?;
        self.rate(request).await?;
        Ok(Response::new(RateCooperationResponse {}))
    }

    async fn record_satisfaction(
        &self,
        request: Request<RecordSatisfactionRequest>,
    ) -> Result<Response<RecordSatisfactionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        self.require_case_region(&caller, &request.case_id).await?;
        self.record_callback(request).await?;
        Ok(Response::new(RecordSatisfactionResponse {}))
    }

    async fn get_scorecard(
        &self,
        request: Request<GetScorecardRequest>,
    ) -> Result<Response<Scorecard>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        self.require_reader(&caller, &request.department_code, &request.region_code)
            .await?;
        Ok(Response::new(self.scorecard(request).await?))
    }

    async fn get_ranking(
        &self,
        request: Request<GetRankingRequest>,
    ) -> Result<Response<Ranking>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        crate::policy::require_ranking_scope(&caller, &request)?;
        Ok(Response::new(self.ranking(request).await?))
    }

    async fn explain_score(
        &self,
        request: Request<ExplainScoreRequest>,
    ) -> Result<Response<ExplainScoreResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        self.require_reader(&caller, &request.department_code, "")
            .await?;
        Ok(Response::new(self.explain(request).await?))
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use whistle_platform::testing::arbitrary::{mostly, one_of_or_text, text, wire_bytes};
    use whistle_platform::testing::run_decoder_property;

    /// Small limits, so generated values fall on both sides of every one.
    fn limits() -> LimitsConfig {
        LimitsConfig {
            id_chars: 6,
            code_chars: 14,
            text_chars: 8,
            ..LimitsConfig::default()
        }
    }

    fn within(value: &str, limit: usize) -> bool {
        value.chars().count() <= limit
    }

    #[test]
    fn whatever_the_writes_accept_is_within_every_limit() {
        let limits = limits();
        let id = || mostly(&["a-1", "街道-1"], 6);
        // raters are division codes (9 or 12 digits): longer ids, a limit both sides of them
        let rating_limits = LimitsConfig {
            id_chars: 10,
            ..limits.clone()
        };
        let rating = (
            id(),
            prop_oneof![3 => 1i32..3, 1 => -1i32..4],
            mostly(&["420303003", "420303003001", "4203030"], 11),
            prop_oneof![3 => 1u32..6, 1 => any::<u32>()],
            text(8),
        )
            .prop_map(|(assignment_id, rater, rater_id, score, comment)| {
                RateCooperationRequest {
                    assignment_id,
                    rater,
                    rater_id,
                    score,
                    comment,
                }
            });
        run_decoder_property("RateCooperation", 256, wire_bytes(rating), |bytes| {
            let Ok(request) = RateCooperationRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_rating(&rating_limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.assignment_id, rating_limits.id_chars));
            prop_assert!(within(&request.rater_id, rating_limits.id_chars));
            prop_assert!(within(&request.comment, limits.text_chars));
            Ok(true)
        });
        let callback = (
            id(),
            id(),
            prop_oneof![3 => 1i32..4, 1 => -1i32..5],
            text(8),
        )
            .prop_map(
                |(case_id, callback_id, result, note)| RecordSatisfactionRequest {
                    case_id,
                    callback_id,
                    result,
                    note,
                },
            );
        run_decoder_property("RecordSatisfaction", 256, wire_bytes(callback), |bytes| {
            let Ok(request) = RecordSatisfactionRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_callback(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.case_id, limits.id_chars));
            prop_assert!(within(&request.callback_id, limits.id_chars));
            prop_assert!(within(&request.note, limits.text_chars));
            Ok(true)
        });
    }

    #[test]
    fn whatever_the_reads_accept_is_within_every_limit() {
        let limits = limits();
        let department = || one_of_or_text(&["zw-sanitation", "ZW_1"], 14);
        let period = || one_of_or_text(&["2026-11", "2026-Q4", "2026"], 14);
        let scorecard =
            (department(), period()).prop_map(|(department_code, period)| GetScorecardRequest {
                department_code,
                period,
                region_code: String::new(),
            });
        run_decoder_property("GetScorecard", 256, wire_bytes(scorecard), |bytes| {
            let Ok(request) = GetScorecardRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_scorecard(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.department_code, limits.code_chars));
            prop_assert!(within(&request.period, limits.code_chars));
            Ok(true)
        });
        let ranking = (
            period(),
            one_of_or_text(&["", "city", "district"], 14),
            one_of_or_text(&["", "420303"], 16),
        )
            .prop_map(|(period, level, region_code)| GetRankingRequest {
                period,
                level,
                region_code,
                case_region_code: String::new(),
            });
        run_decoder_property("GetRanking", 256, wire_bytes(ranking), |bytes| {
            let Ok(request) = GetRankingRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_ranking(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.period, limits.code_chars));
            prop_assert!(within(&request.level, limits.code_chars));
            prop_assert!(within(&request.region_code, limits.code_chars));
            Ok(true)
        });
        let explanation = (
            department(),
            period(),
            one_of_or_text(&["report_rate", "rework_rate"], 14),
        )
            .prop_map(|(department_code, period, indicator)| ExplainScoreRequest {
                department_code,
                period,
                indicator,
            });
        run_decoder_property("ExplainScore", 256, wire_bytes(explanation), |bytes| {
            let Ok(request) = ExplainScoreRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_explanation(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.department_code, limits.code_chars));
            prop_assert!(within(&request.period, limits.code_chars));
            prop_assert!(within(&request.indicator, limits.code_chars));
            Ok(true)
        });
    }
}
