//! `EvaluationService` over gRPC: request validation, proto <-> domain conversion.

use crate::domain::{
    self, AssignmentFacts, CallbackResult, CooperationRating, DepartmentLevel, Explained, Period,
    PeriodBounds, RankingCandidate, SatisfactionCallback, ScorecardFigures, Scoring, UtcOffset,
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
    CompositePart, ExplainScoreRequest, ExplainScoreResponse, ExplainedAssignment,
    GetRankingRequest, GetScorecardRequest, Indicators, Ranking, RankingEntry,
    RateCooperationRequest, RateCooperationResponse, Rater, RecordSatisfactionRequest,
    RecordSatisfactionResponse, Satisfaction, Scorecard, ScorecardCounts,
};

/// Name of this service in events and traces.
pub const SOURCE: &str = "whistle-evaluation";

/// The gRPC face of evaluation.
#[derive(Debug, Clone)]
pub struct EvaluationGrpc {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub utc_offset: UtcOffset,
    pub scoring: Scoring,
    /// Lengths every request field is held to.
    pub limits: LimitsConfig,
}

/// One department's period, scored.
struct DepartmentPeriod {
    bounds: PeriodBounds,
    assignments: Vec<AssignmentFacts>,
    ratings: Vec<CooperationRating>,
    callbacks: Vec<SatisfactionCallback>,
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
    let rater_id = parse_identifier(limits, "rater_id", &request.rater_id)?;
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
) -> Result<(String, Period), FieldError> {
    let department_code = parse_department_code(limits, &request.department_code)?;
    Ok((department_code, parse_period(limits, &request.period)?))
}

/// Checks a `GetRanking`: the period and the optional level and region filters.
pub fn check_ranking(
    limits: &LimitsConfig,
    request: &GetRankingRequest,
) -> Result<(Period, Option<DepartmentLevel>, Option<String>), FieldError> {
    let period = parse_period(limits, &request.period)?;
    limits.check_code("level", &request.level)?;
    let level = domain::parse_level_filter(&request.level).map_err(field_error("level"))?;
    limits.check_code("region_code", &request.region_code)?;
    let region =
        domain::parse_region_filter(&request.region_code).map_err(field_error("region_code"))?;
    Ok((period, level, region))
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
        // cooperation is rated on what the department did: not before it acknowledged, checked
        // in, resolved or returned
        if !domain::department_acted(&assignment) {
            return Err(EvaluationError::FailedPrecondition(format!(
                "assignment {assignment_id}: the department has not acted yet, nothing to rate"
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
            &self.scoring,
        );
        Ok(DepartmentPeriod {
            bounds,
            assignments,
            ratings,
            callbacks,
            figures,
            computed_at_ms,
        })
    }

    async fn scorecard(&self, request: GetScorecardRequest) -> Result<Scorecard, EvaluationError> {
        let (department_code, period) = check_scorecard(&self.limits, &request)?;
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
            rated: scored.figures.rated,
            scoring_config: self.scoring.fingerprint(),
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
                    domain::scorecard(assignments, &ratings, &callbacks, now_ms, &self.scoring);
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

#[tonic::async_trait]
impl EvaluationService for EvaluationGrpc {
    async fn rate_cooperation(
        &self,
        request: Request<RateCooperationRequest>,
    ) -> Result<Response<RateCooperationResponse>, Status> {
        let caller = whistle_platform::auth::Caller::of(&request)?;
        let mut request = request.into_inner();
        request.rater_id = caller.actor("rater_id", &request.rater_id)?;
        crate::policy::check_rater(&caller, request.rater)?;
        self.rate(request).await?;
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
        let rating = (
            id(),
            prop_oneof![3 => 1i32..3, 1 => -1i32..4],
            id(),
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
            if check_rating(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.assignment_id, limits.id_chars));
            prop_assert!(within(&request.rater_id, limits.id_chars));
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
