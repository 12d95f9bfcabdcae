//! The demo scenario of docs (DOMAIN.md): Chechenglu street, Zhangwan district, Shiyan city.
//! Plays five cases through the real services, as the grid worker, the street, the departments,
//! the community and district supervision (督办) would, and prints what happens: three worked to
//! closure (one with a return the street upholds and a failed verification), one whose department
//! does not report and is escalated within seconds, one with an approved extension (延期).

use crate::client::AuthedChannel;
use crate::client::{Endpoints, with_token};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{
    AcceptCaseRequest, Case, DecideExtensionRequest, DecideReturnRequest, GetCaseRequest,
    LimitOverrides, VerifyCaseRequest, WhistleCaseRequest,
};
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::evaluation::{
    GetScorecardRequest, RateCooperationRequest, Rater, RecordSatisfactionRequest, Satisfaction,
};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, RequestExtensionRequest, ResolveRequest, ReturnRequest,
    SubscribeRequest,
};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{
    AssignmentFlag, AssignmentStatus, CaseStatus, Channel as ReportChannel, Place, Severity,
};

/// What the demo left behind, for tests and the summary.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The five cases, in the order played.
    pub case_ids: Vec<String>,
    pub scorecards: BTreeMap<String, Option<f64>>,
    /// The notice district supervision received for the escalated case: its kind and sequence.
    pub supervision_notice: Option<(String, u64)>,
}

/// The limits of the case whose department does not report: 报到 within 5 s, 督办 5 s later.
const IGNORED_ACKNOWLEDGE_SECS: i64 = 5;
const IGNORED_ESCALATE_AFTER_SECS: i64 = 5;

struct Demo {
    intake: IntakeServiceClient<AuthedChannel>,
    dispatch: DispatchServiceClient<AuthedChannel>,
    gateway: DepartmentGatewayClient<Channel>,
    evaluation: EvaluationServiceClient<AuthedChannel>,
    tokens: BTreeMap<String, String>,
    run: String,
}

const WAIT: Duration = Duration::from_secs(30);

impl Demo {
    /// The token of the community worker of the case's community.
    async fn community_token(&mut self, case_id: &str) -> anyhow::Result<String> {
        let case = self
            .dispatch
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
            .map_err(crate::client::status_error)?
            .into_inner();
        let community = case
            .region
            .map(|region| region.community_code)
            .unwrap_or_default();
        crate::client::persona_token(&format!("community:{community}"))
            .or_else(|| crate::client::persona_token("community"))
            .ok_or_else(|| anyhow::anyhow!("no community worker token for community {community}"))
    }

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

    fn status_of(case: &Case, assignment_id: &str) -> i32 {
        case.assignments
            .iter()
            .find(|a| a.assignment_id == assignment_id)
            .map(|a| a.status)
            .unwrap_or_default()
    }

    /// 报到 and 到场 by one department (when it has not yet reported).
    async fn report_for_duty(
        &mut self,
        case: &Case,
        department: &str,
        person: &str,
    ) -> anyhow::Result<()> {
        let assignment_id = Self::assignment_of(case, department)?;
        if Self::status_of(case, &assignment_id) != AssignmentStatus::Whistled as i32 {
            return Ok(());
        }
        let token = self.token(department)?.to_string();
        let place = case.place.clone().unwrap_or_default();
        let acknowledged = self
            .gateway
            .acknowledge(with_token(
                AcknowledgeRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-ack"),
                    responsible_person: person.into(),
                    ..Default::default()
                },
                &token,
            )?)
            .await?
            .into_inner();
        let late = acknowledged
            .flags
            .contains(&(AssignmentFlag::AckOverdue as i32));
        println!(
            "    {department} 报到: {person} is responsible{}",
            if late { " (late)" } else { "" }
        );
        self.gateway
            .check_in(with_token(
                CheckInRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-in"),
                    lat: place.lat + 0.0002,
                    lng: place.lng,
                    person: person.into(),
                    datum: 0,
                },
                &token,
            )?)
            .await?;
        println!("    {department} 到场 at {}", place.address);
        Ok(())
    }

    /// 办结 by one department.
    async fn resolve(
        &mut self,
        case: &Case,
        department: &str,
        resolution: &str,
    ) -> anyhow::Result<()> {
        let assignment_id = Self::assignment_of(case, department)?;
        let token = self.token(department)?.to_string();
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

    /// 报到, 到场 and 办结 by one department.
    async fn work(
        &mut self,
        case: &Case,
        department: &str,
        person: &str,
        resolution: &str,
    ) -> anyhow::Result<()> {
        self.report_for_duty(case, department, person).await?;
        self.resolve(case, department, resolution).await
    }

    /// Waits on a supervision department's notice stream for the escalation of `case_id`.
    async fn supervision_notice(
        &mut self,
        supervision: &str,
        case_id: &str,
    ) -> anyhow::Result<(String, u64)> {
        let token = self.token(supervision)?.to_string();
        let mut notices = self
            .gateway
            .subscribe(with_token(SubscribeRequest { after_sequence: 0 }, &token)?)
            .await?
            .into_inner();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notice = tokio::time::timeout_at(deadline, notices.message())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{supervision} received no escalation of case {case_id} within {WAIT:?}"
                    )
                })?
                .map_err(crate::client::status_error)?
                .ok_or_else(|| anyhow::anyhow!("{supervision}'s notice stream ended"))?;
            if notice.case_id == case_id && notice.kind == "case.escalated" {
                return Ok((notice.kind, notice.sequence));
            }
        }
    }

    /// 核查; a failed verification names the assignments whose work failed.
    async fn verify(
        &mut self,
        case_id: &str,
        passed: bool,
        note: &str,
        failed: &[String],
    ) -> anyhow::Result<Case> {
        self.case_when(case_id, "awaiting verification", |case| {
            case.status == CaseStatus::AwaitingVerification as i32
        })
        .await?;
        // the community of the case verifies it, with its own credential
        let community = self.community_token(case_id).await?;
        let request = VerifyCaseRequest {
            case_id: case_id.into(),
            passed,
            note: note.into(),
            failed_assignment_ids: failed.to_vec(),
            ..Default::default()
        };
        let case = self
            .dispatch
            .verify_case(crate::client::as_person(request, &community)?)
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
            // the street and the case's community, each with its own credential (the rater is
            // the credential's street or community)
            let community = self.community_token(&case.case_id).await?;
            let street = crate::client::persona_token("street")
                .ok_or_else(|| anyhow::anyhow!("no street operator token"))?;
            for (rater, token) in [(Rater::Street, street), (Rater::Community, community)] {
                let request = RateCooperationRequest {
                    assignment_id: assignment_id.clone(),
                    rater: rater as i32,
                    score: *score,
                    ..Default::default()
                };
                retry_not_found(|| {
                    let mut evaluation = self.evaluation.clone();
                    let request = crate::client::as_person(request.clone(), &token);
                    async move {
                        let request = request
                            .map_err(|error| tonic::Status::invalid_argument(error.to_string()))?;
                        evaluation.rate_cooperation(request).await.map(|_| ())
                    }
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
            // evaluation may not have consumed the case's events yet: the assignment is unknown, or
            // known but its acknowledgement not applied (a rating needs the department to have acted)
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(crate::client::status_error(status)),
        }
    }
}

/// Plays the five cases of the demo scenario and prints the scorecards.
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
    let case = demo.verify(&garbage, true, "", &[]).await?;
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
    let case = demo.verify(&fire_lane, true, "", &[]).await?;
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
            operator_id: String::new(),
        })
        .await?;
    let case = demo
        .dispatch
        .whistle_case(WhistleCaseRequest {
            case_id: property.clone(),
            operator_id: String::new(),
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
                assignment_id: police.clone(),
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
    demo.dispatch
        .decide_return(DecideReturnRequest {
            case_id: property.clone(),
            assignment_id: police,
            operator_id: String::new(),
            upheld: true,
            note: "退回成立: 小区内部道路由物业管理".into(),
        })
        .await?;
    println!("  街道 upholds the return (退回成立): not the traffic police's case");
    let case = demo
        .dispatch
        .whistle_case(WhistleCaseRequest {
            case_id: property.clone(),
            operator_id: String::new(),
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
    // the parking is still a mess: the property company's work failed, the housing bureau's held
    let jinding = Demo::assignment_of(&case, "pm-jinding")?;
    let case = demo
        .verify(&property, false, "停车依旧混乱", &[jinding])
        .await?;
    demo.work(
        &case,
        "pm-jinding",
        "金鼎物业 周经理",
        "增设道闸，专人管理停车",
    )
    .await?;
    let case = demo.verify(&property, true, "", &[]).await?;
    demo.rate(&case, &[("zw-housing", 4), ("pm-jinding", 3)])
        .await?;

    println!("\n== 4. 蓝山郡: street vendors block the gate, and nobody reports ==");
    let vendors = demo
        .report(
            "vendors",
            "E-04-02",
            Severity::Urgent,
            "420303003003002",
            (32.6410, 110.8031, "蓝山郡北门"),
            "蓝山郡北门流动摊贩占道经营，堵塞小区出入口",
        )
        .await?;
    demo.case_when(&vendors, "the report", |case| {
        case.status == CaseStatus::Reported as i32
    })
    .await?;
    let seconds = |value: i64| prost_types::Duration {
        seconds: value,
        nanos: 0,
    };
    let case = demo
        .dispatch
        .whistle_case(WhistleCaseRequest {
            case_id: vendors.clone(),
            operator_id: String::new(),
            lead_department_code: "zw-enforcement".into(),
            co_department_codes: vec![],
            limits: Some(LimitOverrides {
                acknowledge_within: Some(seconds(IGNORED_ACKNOWLEDGE_SECS)),
                acknowledge_escalate_after: Some(seconds(IGNORED_ESCALATE_AFTER_SECS)),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    println!(
        "  街道 立案 and 吹哨: {} must report (报到) within {IGNORED_ACKNOWLEDGE_SECS} s … and does not",
        departments(&case)
    );
    let has_flag = |flag: AssignmentFlag| {
        move |case: &Case| {
            case.assignments
                .iter()
                .any(|assignment| assignment.flags.contains(&(flag as i32)))
        }
    };
    demo.case_when(
        &vendors,
        "the overdue",
        has_flag(AssignmentFlag::AckOverdue),
    )
    .await?;
    println!(
        "  超期: zw-enforcement missed its {IGNORED_ACKNOWLEDGE_SECS} s; whistle.overdue notifies it again and tells the street"
    );
    let case = demo
        .case_when(
            &vendors,
            "the escalation",
            has_flag(AssignmentFlag::Escalated),
        )
        .await?;
    let supervision = case
        .assignments
        .first()
        .map(|assignment| assignment.supervision_department_code.clone())
        .unwrap_or_default();
    println!(
        "  督办: still nothing {IGNORED_ESCALATE_AFTER_SECS} s later — case.escalated to {supervision}"
    );
    let supervision_notice = demo.supervision_notice(&supervision, &vendors).await?;
    println!(
        "  {supervision} receives notice #{} ({}) on its stream",
        supervision_notice.1, supervision_notice.0
    );
    demo.work(
        &case,
        "zw-enforcement",
        "执法局 刘中队长",
        "清理占道摊贩，设置便民疏导点",
    )
    .await?;
    let case = demo.verify(&vendors, true, "", &[]).await?;
    demo.rate(&case, &[("zw-enforcement", 3)]).await?;

    println!("\n== 5. 幸福里: a broken manhole cover, and a spare part two days away ==");
    let manhole = demo
        .report(
            "manhole",
            "C-01-01",
            Severity::Urgent,
            "420303003002002",
            (32.6348, 110.7922, "幸福里3栋前"),
            "幸福里3栋前上水井盖破损，存在安全隐患",
        )
        .await?;
    let case = demo.case_when(&manhole, "the whistle", whistled).await?;
    println!(
        "  街道 吹哨 (route {}): {}",
        case.route_id,
        departments(&case)
    );
    demo.report_for_duty(&case, "sy-water", "水务集团 吴工")
        .await?;
    let water = Demo::assignment_of(&case, "sy-water")?;
    let token = demo.token("sy-water")?.to_string();
    demo.gateway
        .request_extension(with_token(
            RequestExtensionRequest {
                assignment_id: water.clone(),
                request_id: format!("{water}-extension"),
                extra: Some(seconds(48 * 3600)),
                reason: "需更换井座，备件两天后到货；已设置临时围挡".into(),
            },
            &token,
        )?)
        .await?;
    println!(
        "    sy-water 申请延期 48 h: the frame must be replaced, the part arrives in two days"
    );
    let case = demo
        .dispatch
        .decide_extension(DecideExtensionRequest {
            case_id: manhole.clone(),
            assignment_id: water,
            operator_id: String::new(),
            approved: true,
            note: "同意延期，临时围挡须保持到位".into(),
        })
        .await?
        .into_inner();
    let resolve_by = case
        .assignments
        .iter()
        .find(|assignment| assignment.department_code == "sy-water")
        .and_then(|assignment| assignment.deadlines)
        .and_then(|deadlines| deadlines.resolve_by)
        .map(|at| {
            chrono::DateTime::from_timestamp(at.seconds, 0)
                .map(|at| {
                    (at + chrono::Duration::hours(8))
                        .format("%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    println!(
        "  街道 approves (同意延期): 办结 now due {resolve_by} (China time); the old deadline will not fire"
    );
    demo.resolve(&case, "sy-water", "更换井座及井盖，恢复通行")
        .await?;
    let case = demo.verify(&manhole, true, "", &[]).await?;
    demo.rate(&case, &[("sy-water", 4)]).await?;

    println!("\n== scorecards this month ==");
    let period = (chrono::Utc::now() + chrono::Duration::hours(8))
        .format("%Y-%m")
        .to_string();
    let mut scorecards = BTreeMap::new();
    let city_supervisor = crate::client::persona_token("city-supervisor")
        .ok_or_else(|| anyhow::anyhow!("no city supervisor token"))?;
    for department in [
        "zw-sanitation",
        "zw-enforcement",
        "pm-zhongyue",
        "zw-fire-rescue",
        "zw-housing",
        "zw-traffic-police",
        "pm-jinding",
        "sy-water",
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let scorecard = loop {
            // the city's supervision centre reads district and city departments alike
            let request = crate::client::as_person(
                GetScorecardRequest {
                    department_code: department.into(),
                    period: period.clone(),
                    ..Default::default()
                },
                &city_supervisor,
            )?;
            let scorecard = demo.evaluation.get_scorecard(request).await?.into_inner();
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
        // an upheld return (退回 accepted) is neutral: it leaves every denominator but 报到率;
        // 推诿 (a rejected return), 超期 and 督办 count against the department
        println!(
            "  {department:<18} whistled {} responded in time {} resolved {} verified {} returned {} (upheld {}, 推诿 {}) reworked {} 超期 {} 督办 {}  composite {}",
            counts.whistled,
            counts.acknowledged_within_limit,
            counts.resolved,
            counts.verified,
            counts.returned,
            counts.returns_accepted,
            counts.returns_rejected,
            counts.reopened,
            counts.overdue,
            counts.escalated,
            match composite {
                Some(value) => format!("{value:.1}"),
                None if !scorecard.rated => "not rated".to_string(),
                None => "—".to_string(),
            }
        );
        scorecards.insert(department.to_string(), composite);
    }
    println!(
        "  period {period} can be closed once it has ended (automatically {} days after, the 申诉期): whistle evaluation close --period {period}",
        whistle_evaluation::EvaluationConfig::default()
            .evaluation
            .close_after_days
    );
    Ok(DemoOutcome {
        case_ids: vec![garbage, fire_lane, property, vendors, manhole],
        scorecards,
        supervision_notice: Some(supervision_notice),
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
