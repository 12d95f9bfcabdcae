//! `EvaluationService` over gRPC: request validation, proto <-> domain conversion.

use crate::domain::{
    self, AssignmentFacts, CallbackResult, Indicator, Period, PeriodBounds, RankingCandidate,
    ScorecardFigures, UtcOffset, Weights,
};
use crate::error::EvaluationError;
use crate::storage::{self, callback, rating};
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::collections::{BTreeMap, BTreeSet};
use tonic::{Request, Response, Status};
use whistle_platform::clock::{SharedClock, from_millis, to_millis, to_proto_timestamp};
use whistle_platform::validation::{FieldError, LimitsConfig};
use whistle_proto::evaluation::evaluation_service_server::EvaluationService;
use whistle_proto::evaluation::{
    ExplainScoreRequest, ExplainScoreResponse, GetRankingRequest, GetScorecardRequest, Indicators,
    Ranking, RankingEntry, RateCooperationRequest, RateCooperationResponse, Rater,
    RecordSatisfactionRequest, RecordSatisfactionResponse, Satisfaction, Scorecard,
    ScorecardCounts,
};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-evaluation";

/// The gRPC face of evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub utc_offset: UtcOffset,
    pub weights: Weights,
    /// Lengths every request field is held to.
    pub limits: LimitsConfig,
}

/// One department's period, scored.
struct DepartmentPeriod {
    bounds: PeriodBounds,
    assignments: Vec<AssignmentFacts>,
    figures: ScorecardFigures,
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

impl EvaluationGrpc {
    async fn rate(&self, request: RateCooperationRequest) -> Result<(), EvaluationError> {
        let limits = &self.limits;
        let assignment_id = parse_identifier(limits, "assignment_id", &request.assignment_id)?;
        let rater = match Rater::try_from(request.rater) {
            Ok(Rater::Street) => domain::Rater::Street,
            Ok(Rater::Community) => domain::Rater::Community,
            Ok(Rater::Unspecified) | Err(_) => {
                return Err(EvaluationError::invalid(
                    "rater",
                    "required: RATER_STREET or RATER_COMMUNITY",
                ));
            }
        };
        let rater_id = parse_identifier(limits, "rater_id", &request.rater_id)?;
        let score = domain::parse_cooperation_score(request.score).map_err(field_error("score"))?;
        limits.check_text("comment", &request.comment)?;
        let comment = request.comment;

        let transaction = self.db.begin().await?;
        if storage::find_assignment(&transaction, &assignment_id)
            .await?
            .is_none()
        {
            return Err(EvaluationError::NotFound(format!(
                "assignment {assignment_id} not found"
            )));
        }
        storage::save_rating(
            &transaction,
            rating::Model {
                assignment_id: assignment_id.clone(),
                rater: rater.as_str().to_string(),
                rater_id: rater_id.clone(),
                score: i32::from(score),
                comment,
                rated_at_ms: to_millis(self.clock.now()),
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(%assignment_id, rater = rater.as_str(), %rater_id, score, "cooperation rated");
        Ok(())
    }

    async fn record_callback(
        &self,
        request: RecordSatisfactionRequest,
    ) -> Result<(), EvaluationError> {
        let limits = &self.limits;
        let case_id = parse_identifier(limits, "case_id", &request.case_id)?;
        let callback_id = parse_identifier(limits, "callback_id", &request.callback_id)?;
        let result = match Satisfaction::try_from(request.result) {
            Ok(Satisfaction::Satisfied) => CallbackResult::Satisfied,
            Ok(Satisfaction::BasicallySatisfied) => CallbackResult::BasicallySatisfied,
            Ok(Satisfaction::Dissatisfied) => CallbackResult::Dissatisfied,
            Ok(Satisfaction::Unspecified) | Err(_) => {
                return Err(EvaluationError::invalid(
                    "result",
                    "required: SATISFACTION_SATISFIED, SATISFACTION_BASICALLY_SATISFIED or SATISFACTION_DISSATISFIED",
                ));
            }
        };
        limits.check_text("note", &request.note)?;
        let note = request.note;

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
        storage::insert_callback(
            &transaction,
            callback::Model {
                callback_id: callback_id.clone(),
                case_id: case_id.clone(),
                result: result.as_str().to_string(),
                note,
                recorded_at_ms: to_millis(self.clock.now()),
            },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(%case_id, %callback_id, result = result.as_str(), "satisfaction recorded");
        Ok(())
    }

    /// The department's assignments in the period and the figures over them.
    async fn department_period(
        &self,
        department_code: &str,
        period: Period,
    ) -> Result<DepartmentPeriod, EvaluationError> {
        let bounds = period.bounds(self.utc_offset);
        let transaction = self.db.begin().await?;
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
        let computed_at_ms = to_millis(self.clock.now());
        let figures = domain::scorecard(
            &assignments,
            &ratings,
            &callbacks,
            computed_at_ms,
            &self.weights,
        );
        Ok(DepartmentPeriod {
            bounds,
            assignments,
            figures,
            computed_at_ms,
        })
    }

    async fn scorecard(&self, request: GetScorecardRequest) -> Result<Scorecard, EvaluationError> {
        let department_code = parse_department_code(&self.limits, &request.department_code)?;
        let period = parse_period(&self.limits, &request.period)?;
        let scored = self.department_period(&department_code, period).await?;
        Ok(Scorecard {
            department_code,
            period: period.label(),
            period_start: Some(to_proto_timestamp(from_millis(scored.bounds.start_ms))),
            period_end: Some(to_proto_timestamp(from_millis(scored.bounds.end_ms))),
            counts: Some(scorecard_counts(&scored.figures.counts)),
            indicators: Some(indicators(&scored.figures.indicators)),
            composite: scored.figures.composite,
            computed_at: Some(to_proto_timestamp(from_millis(scored.computed_at_ms))),
        })
    }

    async fn ranking(&self, request: GetRankingRequest) -> Result<Ranking, EvaluationError> {
        let period = parse_period(&self.limits, &request.period)?;
        self.limits.check_code("level", &request.level)?;
        let level = domain::parse_level_filter(&request.level).map_err(field_error("level"))?;
        self.limits
            .check_code("region_code", &request.region_code)?;
        let region = domain::parse_region_filter(&request.region_code)
            .map_err(field_error("region_code"))?;
        let bounds = period.bounds(self.utc_offset);

        let transaction = self.db.begin().await?;
        let departments = storage::departments(&transaction).await?;
        let assignments = storage::assignments_whistled_in(&transaction, None, bounds).await?;
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

        let mut by_department: BTreeMap<String, Vec<AssignmentFacts>> = BTreeMap::new();
        for assignment in assignments {
            by_department
                .entry(assignment.department_code.clone())
                .or_default()
                .push(assignment);
        }
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
        let now_ms = to_millis(self.clock.now());
        let candidates = ranked_codes
            .into_iter()
            .map(|department_code| {
                let assignments = by_department
                    .get(&department_code)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let figures =
                    domain::scorecard(assignments, &ratings, &callbacks, now_ms, &self.weights);
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
        let department_code = parse_department_code(&self.limits, &request.department_code)?;
        let period = parse_period(&self.limits, &request.period)?;
        self.limits.check_code("indicator", &request.indicator)?;
        let indicator = Indicator::parse(&request.indicator).map_err(field_error("indicator"))?;
        let scored = self.department_period(&department_code, period).await?;
        let explanation = domain::explain(indicator, &scored.assignments, scored.computed_at_ms);
        Ok(ExplainScoreResponse {
            numerator_assignment_ids: explanation.numerator_assignment_ids,
            denominator_assignment_ids: explanation.denominator_assignment_ids,
        })
    }
}

#[tonic::async_trait]
impl EvaluationService for EvaluationGrpc {
    async fn rate_cooperation(
        &self,
        request: Request<RateCooperationRequest>,
    ) -> Result<Response<RateCooperationResponse>, Status> {
        self.rate(request.into_inner()).await?;
        Ok(Response::new(RateCooperationResponse {}))
    }

    async fn record_satisfaction(
        &self,
        request: Request<RecordSatisfactionRequest>,
    ) -> Result<Response<RecordSatisfactionResponse>, Status> {
        self.record_callback(request.into_inner()).await?;
        Ok(Response::new(RecordSatisfactionResponse {}))
    }

    async fn get_scorecard(
        &self,
        request: Request<GetScorecardRequest>,
    ) -> Result<Response<Scorecard>, Status> {
        Ok(Response::new(self.scorecard(request.into_inner()).await?))
    }

    async fn get_ranking(
        &self,
        request: Request<GetRankingRequest>,
    ) -> Result<Response<Ranking>, Status> {
        Ok(Response::new(self.ranking(request.into_inner()).await?))
    }

    async fn explain_score(
        &self,
        request: Request<ExplainScoreRequest>,
    ) -> Result<Response<ExplainScoreResponse>, Status> {
        Ok(Response::new(self.explain(request.into_inner()).await?))
    }
}
