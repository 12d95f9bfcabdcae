//! The demo scenario of docs (DOMAIN.md): Chechenglu street, Zhangwan district, Shiyan city.
//! Plays three cases through the real services, as the grid worker, the street, the departments
//! and the community would, and prints what happens.

use crate::client::{Endpoints, with_token};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{
    AcceptCaseRequest, Case, GetCaseRequest, VerifyCaseRequest, WhistleCaseRequest,
};
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::evaluation::{
    GetScorecardRequest, RateCooperationRequest, Rater, RecordSatisfactionRequest, Satisfaction,
};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{AcknowledgeRequest, CheckInRequest, ResolveRequest, ReturnRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{
    AssignmentStatus, CaseStatus, Channel as ReportChannel, Place, Severity,
};

/// What the demo left behind, for tests and the summary.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    pub case_ids: Vec<String>,
    pub scorecards: BTreeMap<String, Option<f64>>,
}

struct Demo {
    intake: IntakeServiceClient<Channel>,
    dispatch: DispatchServiceClient<Channel>,
    gateway: DepartmentGatewayClient<Channel>,
    evaluation: EvaluationServiceClient<Channel>,
    tokens: BTreeMap<String, String>,
    run: String,
}

const WAIT: Duration = Duration::from_secs(30);

impl Demo {
    fn token(&self, department: &str) -> anyhow::Result<&str> {
        self.tokens
            .get(department)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no token for {department}"))
    }

    async fn report(
        &mut self,
        key: &str,
        category: &str,
        severity: Severity,
        grid: &str,
        place: (f64, f64, &str),
        description: &str,
    ) -> anyhow::Result<String> {
        let response = self
            .intake
            .submit_report(SubmitReportRequest {
                request_id: format!("demo-{}-{key}", self.run),
                channel: ReportChannel::GridPatrol as i32,
                reporter_id: "网格员-张华".into(),
                category_code: category.into(),
                severity: severity as i32,
                description: description.into(),
                place: Some(Place {
                    grid_code: grid.into(),
                    lat: place.0,
                    lng: place.1,
                    address: place.2.into(),
                }),
                attachments: vec![],
                observed_at: None,
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "  网格员 reports: {description} → case {}",
            response.case_id
        );
        Ok(response.case_id)
    }

    /// Polls the case until `ready` says yes.
    async fn case_when(
        &mut self,
        case_id: &str,
        what: &str,
        ready: impl Fn(&Case) -> bool,
    ) -> anyhow::Result<Case> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(case) = self
                .dispatch
                .get_case(GetCaseRequest {
                    case_id: case_id.into(),
                })
                .await
            {
                let case = case.into_inner();
                if ready(&case) {
                    return Ok(case);
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("case {case_id}: {what} did not happen within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn assignment_of(case: &Case, department: &str) -> anyhow::Result<String> {
        case.assignments
            .iter()
            .rev()
            .find(|assignment| assignment.department_code == department)
            .map(|assignment| assignment.assignment_id.clone())
            .ok_or_else(|| {
                anyhow::anyhow!("{department} has no assignment on case {}", case.case_id)
            })
    }

    /// 报到, 到场 and 办结 by one department.
    async fn work(
        &mut self,
        case: &Case,
        department: &str,
        person: &str,
        resolution: &str,
    ) -> anyhow::Result<()> {
        let assignment_id = Self::assignment_of(case, department)?;
        let token = self.token(department)?.to_string();
        let place = case.place.clone().unwrap_or_default();
        let current = case
            .assignments
            .iter()
            .find(|a| a.assignment_id == assignment_id)
            .map(|a| a.status)
            .unwrap_or_default();
        if current == AssignmentStatus::Whistled as i32 {
            self.gateway
                .acknowledge(with_token(
                    AcknowledgeRequest {
                        assignment_id: assignment_id.clone(),
                        request_id: format!("{assignment_id}-ack"),
                        responsible_person: person.into(),
                        ..Default::default()
                    },
                    &token,
                )?)
                .await?;
            println!("    {department} 报到: {person} is responsible");
            self.gateway
                .check_in(with_token(
                    CheckInRequest {
                        assignment_id: assignment_id.clone(),
                        request_id: format!("{assignment_id}-in"),
                        lat: place.lat + 0.0002,
                        lng: place.lng,
                        person: person.into(),
                    },
                    &token,
                )?)
                .await?;
            println!("    {department} 到场 at {}", place.address);
        }
        self.gateway
            .resolve(with_token(
                ResolveRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-done-{}", uuid::Uuid::now_v7()),
                    resolution: resolution.into(),
                    evidence: vec![],
                },
                &token,
            )?)
            .await?;
        println!("    {department} 办结: {resolution}");
        Ok(())
    }

    async fn verify(&mut self, case_id: &str, passed: bool, note: &str) -> anyhow::Result<Case> {
        self.case_when(case_id, "awaiting verification", |case| {
            case.status == CaseStatus::AwaitingVerification as i32
        })
        .await?;
        let case = self
            .dispatch
            .verify_case(VerifyCaseRequest {
                case_id: case_id.into(),
                verifier_id: "社区-核查员".into(),
                passed,
                note: note.into(),
            })
            .await?
            .into_inner();
        println!(
            "  社区 核查: {}",
            if passed {
                "passed → CLOSED".to_string()
            } else {
                format!("failed ({note}) → REOPENED, 返工")
            }
        );
        Ok(case)
    }

    /// The street and the community rate every department that worked on the case; a resident call-back.
    async fn rate(&mut self, case: &Case, scores: &[(&str, u32)]) -> anyhow::Result<()> {
        for (department, score) in scores {
            let assignment_id = Self::assignment_of(case, department)?;
            for (rater, rater_id) in [(Rater::Street, "车城路街道"), (Rater::Community, "社区")]
            {
                let request = RateCooperationRequest {
                    assignment_id: assignment_id.clone(),
                    rater: rater as i32,
                    rater_id: rater_id.into(),
                    score: *score,
                    comment: String::new(),
                };
                retry_not_found(|| {
                    let mut evaluation = self.evaluation.clone();
                    let request = request.clone();
                    async move { evaluation.rate_cooperation(request).await.map(|_| ()) }
                })
                .await?;
            }
        }
        let request = RecordSatisfactionRequest {
            case_id: case.case_id.clone(),
            callback_id: format!("callback-{}", case.case_id),
            result: Satisfaction::Satisfied as i32,
            note: "居民回访: 满意".into(),
        };
        retry_not_found(|| {
            let mut evaluation = self.evaluation.clone();
            let request = request.clone();
            async move { evaluation.record_satisfaction(request).await.map(|_| ()) }
        })
        .await?;
        println!("  街道/社区 rate the departments; the resident call-back says 满意");
        Ok(())
    }
}

/// Evaluation learns of assignments and cases from events, a moment after dispatch: retry NOT_FOUND.
async fn retry_not_found<F, Fut>(mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(status)
                if status.code() == tonic::Code::NotFound
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(crate::client::status_error(status)),
        }
    }
}

/// Plays the three cases of the demo scenario and prints the scorecards.
pub async fn play(
    endpoints: &Endpoints,
    tokens: BTreeMap<String, String>,
) -> anyhow::Result<DemoOutcome> {
    let mut demo = Demo {
        intake: endpoints.intake().await?,
        dispatch: endpoints.dispatch().await?,
        gateway: endpoints.gateway().await?,
        evaluation: endpoints.evaluation().await?,
        tokens,
        run: uuid::Uuid::now_v7().simple().to_string(),
    };
    let whistled =
        |case: &Case| case.status == CaseStatus::Whistled as i32 && !case.assignments.is_empty();

    println!(
        "\n== 1. 中岳路2号: one big garbage container, three compounds, garbage on the road =="
    );
    let garbage = demo
        .report(
            "garbage",
            "E-01-03",
            Severity::Urgent,
            "420303003001001",
            (32.6369, 110.7986, "中岳路2号"),
            "中岳路2号大垃圾桶满溢，垃圾堆到路面，永福花园、宏发明珠、东昌小区共用",
        )
        .await?;
    let case = demo.case_when(&garbage, "the whistle", whistled).await?;
    println!(
        "  街道 吹哨 (route {}): {}",
        case.route_id,
        departments(&case)
    );
    demo.work(
        &case,
        "zw-sanitation",
        "环卫处 王主任",
        "增加清运频次，当日清理完毕",
    )
    .await?;
    demo.work(
        &case,
        "zw-enforcement",
        "执法局 李队长",
        "现场协调，规范垃圾投放",
    )
    .await?;
    demo.work(
        &case,
        "pm-zhongyue",
        "物业 陈经理",
        "物业与业主分担清运费用",
    )
    .await?;
    let case = demo.verify(&garbage, true, "").await?;
    demo.rate(
        &case,
        &[
            ("zw-sanitation", 5),
            ("zw-enforcement", 4),
            ("pm-zhongyue", 4),
        ],
    )
    .await?;

    println!("\n== 2. 半山尚: the fire lane is blocked ==");
    let fire_lane = demo
        .report(
            "fire-lane",
            "E-05-07",
            Severity::Emergency,
            "420303003003001",
            (32.6402, 110.8013, "半山尚小区"),
            "半山尚小区消防通道被私家车堵塞",
        )
        .await?;
    let case = demo.case_when(&fire_lane, "the whistle", whistled).await?;
    println!(
        "  街道 吹哨 (route {}): {}",
        case.route_id,
        departments(&case)
    );
    demo.work(
        &case,
        "zw-fire-rescue",
        "消防大队 赵站长",
        "通知车主挪车，设置禁停标识",
    )
    .await?;
    let case = demo.verify(&fire_lane, true, "").await?;
    demo.rate(&case, &[("zw-fire-rescue", 5)]).await?;

    println!("\n== 3. 金鼎凤凰城: chaotic property management and parking ==");
    let property = demo
        .report(
            "property",
            "E-06-01",
            Severity::Complex,
            "420303003002001",
            (32.6335, 110.7901, "金鼎凤凰城"),
            "金鼎凤凰城物业管理混乱，小区内乱停车",
        )
        .await?;
    demo.case_when(&property, "routing", |case| {
        case.status == CaseStatus::Reported as i32 && !case.route_id.is_empty()
    })
    .await?;
    demo.dispatch
        .accept_case(AcceptCaseRequest {
            case_id: property.clone(),
            operator_id: "车城路调度中心".into(),
        })
        .await?;
    let case = demo
        .dispatch
        .whistle_case(WhistleCaseRequest {
            case_id: property.clone(),
            operator_id: "车城路调度中心".into(),
            lead_department_code: "zw-housing".into(),
            co_department_codes: vec!["zw-traffic-police".into()],
            limits: None,
        })
        .await?
        .into_inner();
    println!("  街道 立案 and 吹哨: {}", departments(&case));
    let police = Demo::assignment_of(&case, "zw-traffic-police")?;
    let token = demo.token("zw-traffic-police")?.to_string();
    demo.gateway
        .r#return(with_token(
            ReturnRequest {
                assignment_id: police,
                request_id: String::new(),
                reason: "小区内部道路停车属物业管理范围".into(),
                suggested_department_code: "pm-jinding".into(),
            },
            &token,
        )?)
        .await?;
    println!(
        "    zw-traffic-police 退回: inside the compound, parking is the property company's business"
    );
    let case = demo
        .dispatch
        .whistle_case(WhistleCaseRequest {
            case_id: property.clone(),
            operator_id: "车城路调度中心".into(),
            lead_department_code: "zw-housing".into(),
            co_department_codes: vec!["pm-jinding".into()],
            limits: None,
        })
        .await?
        .into_inner();
    println!("  街道 re-whistles: {}", departments(&case));
    demo.work(&case, "zw-housing", "住建局 孙科长", "约谈物业，限期整改")
        .await?;
    demo.work(&case, "pm-jinding", "金鼎物业 周经理", "划定停车位")
        .await?;
    let case = demo.verify(&property, false, "停车依旧混乱").await?;
    demo.work(
        &case,
        "zw-housing",
        "住建局 孙科长",
        "召开三方协商会，业委会监督整改",
    )
    .await?;
    demo.work(
        &case,
        "pm-jinding",
        "金鼎物业 周经理",
        "增设道闸，专人管理停车",
    )
    .await?;
    let case = demo.verify(&property, true, "").await?;
    demo.rate(&case, &[("zw-housing", 4), ("pm-jinding", 3)])
        .await?;

    println!("\n== scorecards this month ==");
    let period = (chrono::Utc::now() + chrono::Duration::hours(8))
        .format("%Y-%m")
        .to_string();
    let mut scorecards = BTreeMap::new();
    for department in [
        "zw-sanitation",
        "zw-enforcement",
        "pm-zhongyue",
        "zw-fire-rescue",
        "zw-housing",
        "zw-traffic-police",
        "pm-jinding",
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let scorecard = loop {
            let scorecard = demo
                .evaluation
                .get_scorecard(GetScorecardRequest {
                    department_code: department.into(),
                    period: period.clone(),
                })
                .await?
                .into_inner();
            let counts = scorecard.counts.unwrap_or_default();
            // wait until the verifications and ratings have reached evaluation
            if counts.verified + counts.returned >= 1
                && (counts.cooperation_ratings >= 1 || counts.returned >= 1)
                || tokio::time::Instant::now() > deadline
            {
                break scorecard;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let counts = scorecard.counts.unwrap_or_default();
        let composite = scorecard.composite;
        println!(
            "  {department:<18} whistled {} acknowledged {} resolved {} verified {} returned {} reopened {}  composite {}",
            counts.whistled,
            counts.acknowledged,
            counts.resolved,
            counts.verified,
            counts.returned,
            counts.reopened,
            composite.map_or("—".to_string(), |value| format!("{value:.1}"))
        );
        scorecards.insert(department.to_string(), composite);
    }
    Ok(DemoOutcome {
        case_ids: vec![garbage, fire_lane, property],
        scorecards,
    })
}

fn departments(case: &Case) -> String {
    case.assignments
        .iter()
        .filter(|assignment| assignment.status != AssignmentStatus::Returned as i32)
        .map(|assignment| assignment.department_code.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
