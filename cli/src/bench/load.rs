//! The load: reports submitted at a fixed arrival rate (open loop) or as fast as a bounded number of
//! open cases allows; simulated department systems that subscribe through the gateway and
//! acknowledge, check in and resolve every assignment; a simulated community that verifies every
//! case; an observer on NATS that times Acknowledge → its event; and a poller that waits until the
//! lead department's scorecard counts every case.

use super::stats::{Percentiles, millis, rate};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use whistle_platform::clock::from_proto_timestamp;
use whistle_proto::dispatch::VerifyCaseRequest;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::evaluation::GetScorecardRequest;
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::events::Event;
use whistle_proto::events::event::Payload;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{
    AcknowledgeRequest, CheckInRequest, ResolveRequest, SubscribeRequest,
};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel as ReportChannel, Place, Severity};

/// The department the bench's reports are routed to as lead (garbage overflow, E-01-03).
pub const LEAD_DEPARTMENT: &str = "zw-sanitation";

/// The bearer token of each role, one parameter each (absent: the call carries none).
#[derive(Debug, Clone, Default)]
pub struct Roles {
    /// Department code → its token, for Subscribe, Acknowledge, CheckIn and Resolve.
    pub departments: BTreeMap<String, String>,
    /// SubmitReport (a grid worker).
    pub reporter: Option<String>,
    /// VerifyCase (the community).
    pub community: Option<String>,
    /// GetScorecard (the bench watching evaluation).
    pub observer: Option<String>,
    /// Department code → the sequence its system had already received (`--preload`'s history):
    /// its Subscribe stream starts after it.
    pub after_sequence: BTreeMap<String, u64>,
}

fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Clients of the four services.
#[derive(Debug, Clone)]
pub struct Clients {
    pub intake: IntakeServiceClient<Channel>,
    pub dispatch: DispatchServiceClient<Channel>,
    pub gateway: DepartmentGatewayClient<Channel>,
    pub evaluation: EvaluationServiceClient<Channel>,
}

/// How one phase of load is offered.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub cases: usize,
    /// Arrivals per second (open loop); `None`: as fast as `in_flight` open cases allow.
    pub rate: Option<f64>,
    /// Cases between SubmitReport and verification at a time, when there is no rate.
    pub in_flight: usize,
}

/// What one phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    pub cases: usize,
    /// Cases counted on the lead department's scorecard (the whole lifecycle done).
    pub completed: usize,
    /// From the first arrival to the last case counted.
    pub elapsed_seconds: f64,
    /// Cases per second reaching each stage (count / time from the first arrival to the last case
    /// reaching it).
    pub stages_cases_per_second: BTreeMap<String, f64>,
    pub stages_count: BTreeMap<String, usize>,
    pub submit_report_ms: Percentiles,
    /// SubmitReport sent (open loop: its scheduled arrival) → the case's first Notice on a
    /// department's Subscribe stream.
    pub report_to_notice_ms: Percentiles,
    /// SubmitReport answered → first Notice.
    pub report_answered_to_notice_ms: Percentiles,
    /// Report → first Notice in three legs, by the wall clock every process on this machine
    /// shares: SubmitReport sent → the `whistle.issued` event made (its `occurred_at`: intake's
    /// commit, its relay, dispatch's consumer); → the gateway sending the Notice (its
    /// `delivered_at`: dispatch's commit and relay, the gateway's consumer and commit, the
    /// subscription's read); → the bench receiving it (the gRPC stream).
    pub notice_legs_ms: NoticeLegs,
    /// The cases with the longest report → first Notice, slowest first: when each was sent and
    /// its legs, to tell a pause of the whole machine (slow cases bunched in time, every leg long)
    /// from one slow hop.
    pub slowest_notices: Vec<SlowNotice>,
    /// Acknowledge sent → its whistle.acknowledged event seen on NATS.
    pub acknowledge_to_event_ms: Percentiles,
    /// SubmitReport sent → the case counted (verified) on the lead department's scorecard.
    pub report_to_scorecard_ms: Percentiles,
    /// How far behind schedule arrivals were sent (open loop), ms.
    pub arrival_lag_ms: Percentiles,
    /// Errors by call and gRPC code.
    pub errors: BTreeMap<String, u64>,
}

/// The three legs of report → first Notice (see [`LoadResult::notice_legs_ms`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NoticeLegs {
    pub report_to_whistle_event: Percentiles,
    pub whistle_event_to_sent: Percentiles,
    pub sent_to_received: Percentiles,
}

/// One of [`LoadResult::slowest_notices`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlowNotice {
    /// SubmitReport sent, seconds after the phase started.
    pub sent_after_s: f64,
    /// SubmitReport sent, by the wall clock (RFC 3339), to find in the servers' logs.
    pub sent_at: String,
    /// Report → first Notice, ms.
    pub ms: f64,
    /// The legs of [`NoticeLegs`], ms (empty when a time is missing).
    pub legs_ms: Vec<f64>,
}

/// How many cases [`LoadResult::slowest_notices`] lists.
const SLOWEST: usize = 10;

/// When a case reached one stage.
type StagePick = dyn Fn(&CaseTrack) -> Option<Instant>;

#[derive(Debug, Default)]
struct CaseTrack {
    sent: Option<Instant>,
    answered: Option<Instant>,
    first_notice: Option<Instant>,
    /// Wall-clock times of the report's sending and of its first notice's event, sending and
    /// arrival (the legs of [`NoticeLegs`]).
    sent_wall: Option<chrono::DateTime<chrono::Utc>>,
    notice_walls: Option<[chrono::DateTime<chrono::Utc>; 3]>,
    expected: Option<usize>,
    acknowledged: usize,
    acknowledged_at: Option<Instant>,
    resolved: usize,
    resolved_at: Option<Instant>,
    verified_at: Option<Instant>,
    scored_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    cases: HashMap<String, CaseTrack>,
    handled_assignments: HashSet<String>,
    ack_sent: HashMap<String, Instant>,
    ack_to_event: Vec<Duration>,
    /// Cases of the current phase, in the order they were verified.
    verified_order: Vec<String>,
    scored: usize,
    scorecard_baseline: u64,
    submitted: Vec<String>,
    submit_latencies: Vec<Duration>,
    arrival_lag: Vec<Duration>,
    failed: usize,
    failed_cases: HashSet<String>,
    errors: BTreeMap<String, u64>,
}

impl State {
    fn error(&mut self, call: &str, status: &tonic::Status) {
        *self
            .errors
            .entry(format!("{call}: {:?}", status.code()))
            .or_default() += 1;
    }
}

/// How often the bench reads the lead department's live scorecard. A live card is computed from
/// every assignment of the period on each read, so the observer's own load grows with the cases
/// already counted: at 20 ms (as first written) those reads were a quarter or more of
/// evaluation's CPU (docs/benchmarks.md). A supervisor's dashboard refreshes every few seconds;
/// 500 ms keeps report → counted (seconds) measurable.
pub const SCORECARD_POLL: Duration = Duration::from_millis(500);

/// The running simulation: department systems, community, observers.
pub struct Load {
    clients: Clients,
    roles: Roles,
    state: Arc<Mutex<State>>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    run: String,
    period: String,
}

const RETRYABLE: [tonic::Code; 4] = [
    tonic::Code::Unavailable,
    tonic::Code::ResourceExhausted,
    tonic::Code::Aborted,
    tonic::Code::DeadlineExceeded,
];

/// Calls until success, a non-transient error, or `attempts` tries; each failure is counted.
async fn with_retries<T, F, Fut>(
    state: &Mutex<State>,
    call: &str,
    attempts: usize,
    retry_also: Option<tonic::Code>,
    mut make: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match make().await {
            Ok(value) => return Ok(value),
            Err(status) => {
                let waiting = Some(status.code()) == retry_also;
                if !waiting {
                    lock(state).error(call, &status);
                }
                if attempt >= attempts || !(RETRYABLE.contains(&status.code()) || waiting) {
                    if waiting {
                        lock(state).error(call, &status);
                    }
                    return Err(status);
                }
                tokio::time::sleep(Duration::from_millis(if waiting { 10 } else { 100 })).await;
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A report at its own place (a 997 × 997 lattice of 0.001°, about 100 m apart), so none joins
/// another's case; the grid code is given, so the position need not lie in the grid.
fn report(index: usize, run: &str, phase: &str) -> SubmitReportRequest {
    let (row, column) = ((index % 997) as f64, ((index / 997) % 997) as f64);
    SubmitReportRequest {
        request_id: format!("bench-{run}-{phase}-{index}"),
        channel: ReportChannel::GridPatrol as i32,
        reporter_id: "bench".into(),
        category_code: "E-01-03".into(),
        severity: Severity::Urgent as i32,
        description: format!("bench report {index}: 垃圾满溢"),
        place: Some(Place {
            grid_code: "420303003001001".into(),
            lat: 32.6369 + row * 0.001,
            lng: 110.7986 + column * 0.001,
            address: "中岳路2号".into(),
        }),
        attachments: vec![],
        observed_at: None,
        ..Default::default()
    }
}

impl Load {
    /// Starts the department systems (one Subscribe stream each), the NATS observer and the
    /// scorecard poller.
    pub async fn start(
        clients: Clients,
        roles: Roles,
        nats: async_nats::Client,
    ) -> anyhow::Result<Load> {
        let load = Load {
            clients,
            roles,
            state: Arc::new(Mutex::new(State::default())),
            permits: Arc::new(Semaphore::new(0)),
            stop: CancellationToken::new(),
            run: uuid::Uuid::now_v7().simple().to_string(),
            period: (chrono::Utc::now() + chrono::Duration::hours(8))
                .format("%Y-%m")
                .to_string(),
        };
        for (department, token) in &load.roles.departments {
            let after_sequence = load
                .roles
                .after_sequence
                .get(department)
                .copied()
                .unwrap_or(0);
            tokio::spawn(load.department(department.clone(), token.clone(), after_sequence));
        }
        let mut events = nats.subscribe("whistle.v1.>").await?;
        let state = load.state.clone();
        let stop = load.stop.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    message = events.next() => match message { Some(message) => message, None => return },
                };
                let seen = Instant::now();
                let Ok(event) = <Event as prost::Message>::decode(message.payload) else {
                    continue;
                };
                if let Some(Payload::AssignmentAcknowledged(acknowledged)) = &event.payload
                    && let Some(assignment) = &acknowledged.assignment
                {
                    let mut state = lock(&state);
                    if let Some(sent) = state.ack_sent.remove(&assignment.assignment_id) {
                        state.ack_to_event.push(seen - sent);
                    }
                }
            }
        });
        tokio::spawn(load.scorecard_poller());
        Ok(load)
    }

    /// Stops the simulation's tasks.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// One department system: follows its Subscribe stream (resuming after its last sequence when
    /// the stream breaks) and works every assignment whistled to it.
    fn department(
        &self,
        department: String,
        token: String,
        after_sequence: u64,
    ) -> impl Future<Output = ()> + 'static {
        let mut gateway = self.clients.gateway.clone();
        let state = self.state.clone();
        let stop = self.stop.clone();
        let worker = self.worker();
        async move {
            let mut after_sequence = after_sequence;
            while !stop.is_cancelled() {
                let stream = gateway
                    .subscribe(authorized(
                        SubscribeRequest { after_sequence },
                        Some(&token),
                    ))
                    .await;
                let mut notices = match stream {
                    Ok(stream) => stream.into_inner(),
                    Err(status) => {
                        lock(&state).error("Subscribe", &status);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                loop {
                    let notice = tokio::select! {
                        _ = stop.cancelled() => return,
                        notice = notices.message() => notice,
                    };
                    let notice = match notice {
                        Ok(Some(notice)) => notice,
                        Ok(None) => break,
                        Err(status) => {
                            lock(&state).error("Subscribe stream", &status);
                            break;
                        }
                    };
                    after_sequence = notice.sequence;
                    if notice.kind != "whistle.issued" {
                        continue;
                    }
                    let arrived = Instant::now();
                    let arrived_wall = chrono::Utc::now();
                    let delivered_wall =
                        notice.delivered_at.as_ref().and_then(from_proto_timestamp);
                    let Some(event) = notice.event else {
                        continue;
                    };
                    let made_wall = event.occurred_at.as_ref().and_then(from_proto_timestamp);
                    let Some(Payload::WhistleIssued(issued)) = event.payload else {
                        continue;
                    };
                    {
                        let mut state = lock(&state);
                        if !state
                            .handled_assignments
                            .insert(notice.assignment_id.clone())
                        {
                            continue;
                        }
                        let case = state.cases.entry(notice.case_id.clone()).or_default();
                        if case.first_notice.is_none()
                            && let (Some(made), Some(delivered)) = (made_wall, delivered_wall)
                        {
                            case.notice_walls = Some([made, delivered, arrived_wall]);
                        }
                        case.first_notice.get_or_insert(arrived);
                        case.expected = Some(1 + issued.co_department_codes.len());
                    }
                    let place = issued.place.unwrap_or_default();
                    tokio::spawn(worker.clone().work(
                        department.clone(),
                        token.clone(),
                        notice.case_id,
                        notice.assignment_id,
                        place,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn worker(&self) -> Worker {
        Worker {
            gateway: self.clients.gateway.clone(),
            dispatch: self.clients.dispatch.clone(),
            state: self.state.clone(),
            permits: self.permits.clone(),
            community: self.roles.community.clone(),
        }
    }

    async fn lead_verified(&self) -> anyhow::Result<u64> {
        lead_verified(
            &mut self.clients.evaluation.clone(),
            &self.period,
            self.roles.observer.as_deref(),
        )
        .await
        .map_err(|status| anyhow::anyhow!("GetScorecard: {status}"))
    }

    fn scorecard_poller(&self) -> impl Future<Output = ()> + 'static {
        let mut evaluation = self.clients.evaluation.clone();
        let period = self.period.clone();
        let token = self.roles.observer.clone();
        let state = self.state.clone();
        let stop = self.stop.clone();
        async move {
            while !stop.is_cancelled() {
                match lead_verified(&mut evaluation, &period, token.as_deref()).await {
                    Ok(verified) => {
                        let now = Instant::now();
                        let mut state = lock(&state);
                        let counted = verified.saturating_sub(state.scorecard_baseline) as usize;
                        let upto = counted.min(state.verified_order.len());
                        for index in state.scored..upto {
                            let case_id = state.verified_order[index].clone();
                            if let Some(case) = state.cases.get_mut(&case_id) {
                                case.scored_at = Some(now);
                            }
                        }
                        state.scored = state.scored.max(upto);
                    }
                    Err(status) => lock(&state).error("GetScorecard", &status),
                }
                tokio::time::sleep(SCORECARD_POLL).await;
            }
        }
    }

    /// Offers one phase of load and waits until every case is counted on the scorecard, or nothing
    /// progressed for `stall`.
    pub async fn phase(
        &self,
        name: &str,
        shape: LoadShape,
        stall: Duration,
    ) -> anyhow::Result<LoadResult> {
        // the scorecard as it stands: asked again while evaluation cannot answer yet (a service
        // starting on a large preloaded history), for at most `stall`
        let asked = Instant::now();
        let baseline = loop {
            match self.lead_verified().await {
                Ok(verified) => break verified,
                Err(error) if asked.elapsed() < stall => {
                    eprintln!("{name}: the scorecard before the phase: {error}; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        };
        {
            let mut state = lock(&self.state);
            state.verified_order.clear();
            state.scored = 0;
            state.scorecard_baseline = baseline;
            state.submitted.clear();
            state.submit_latencies.clear();
            state.arrival_lag.clear();
            state.ack_to_event.clear();
            state.failed = 0;
            state.failed_cases.clear();
            state.errors.clear();
        }
        let open_loop = shape.rate.filter(|rate| *rate > 0.0);
        self.permits
            .forget_permits(self.permits.available_permits());
        if open_loop.is_none() {
            self.permits.add_permits(shape.in_flight.max(1));
        }
        let started = Instant::now();
        for index in 0..shape.cases {
            let scheduled = match open_loop {
                Some(rate) => {
                    let at = started + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(at).await;
                    at
                }
                None => {
                    self.permits.acquire().await?.forget();
                    Instant::now()
                }
            };
            let request = report(index, &self.run, name);
            let intake = self.clients.intake.clone();
            let state = self.state.clone();
            let permits = self.permits.clone();
            let token = self.roles.reporter.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                // the scheduled arrival on the wall clock, for the legs of report → Notice
                let sent_wall = chrono::Utc::now()
                    - chrono::Duration::from_std(sent - scheduled).unwrap_or_default();
                let result = with_retries(&state, "SubmitReport", 50, None, || {
                    let request = authorized(request.clone(), token.as_deref());
                    let mut intake = intake.clone();
                    async move { intake.submit_report(request).await }
                })
                .await;
                let answered = Instant::now();
                let mut state = lock(&state);
                match result {
                    Ok(response) => {
                        let case_id = response.into_inner().case_id;
                        let case = state.cases.entry(case_id.clone()).or_default();
                        case.sent = Some(scheduled);
                        case.sent_wall = Some(sent_wall);
                        case.answered = Some(answered);
                        state.submitted.push(case_id);
                        state.submit_latencies.push(answered - scheduled);
                        state.arrival_lag.push(sent - scheduled);
                    }
                    Err(_) => {
                        state.failed += 1;
                        permits.add_permits(1);
                    }
                }
            });
        }

        let mut last_progress = (0, 0, 0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (verified, scored, failed, submitted) = {
                let state = lock(&self.state);
                (
                    state.verified_order.len(),
                    state.scored,
                    state.failed,
                    state.submitted.len(),
                )
            };
            if scored + failed >= shape.cases {
                break;
            }
            let progress = (verified, scored, submitted);
            if progress != (last_progress.0, last_progress.1, last_progress.2) {
                last_progress = (verified, scored, submitted, Instant::now());
            } else if last_progress.3.elapsed() > stall {
                eprintln!(
                    "bench: no progress for {stall:?}: {submitted} submitted, {verified} verified, {scored} counted of {} cases",
                    shape.cases
                );
                break;
            }
        }
        Ok(self.result(shape.cases, started))
    }

    fn result(&self, cases: usize, started: Instant) -> LoadResult {
        let state = lock(&self.state);
        let tracks: Vec<&CaseTrack> = state
            .submitted
            .iter()
            .filter_map(|case_id| state.cases.get(case_id))
            .collect();
        let since = |at: Option<Instant>, from: Option<Instant>| match (at, from) {
            (Some(at), Some(from)) if at >= from => Some(at - from),
            _ => None,
        };
        let durations = |pick: &dyn Fn(&CaseTrack) -> Option<Duration>| -> Vec<Duration> {
            tracks.iter().filter_map(|track| pick(track)).collect()
        };
        let mut stages_cases_per_second = BTreeMap::new();
        let mut stages_count = BTreeMap::new();
        let stages: [(&str, &StagePick); 6] = [
            ("1 submitted", &|track| track.answered),
            ("2 whistled (first notice)", &|track| track.first_notice),
            ("3 acknowledged (every assignment)", &|track| {
                track.acknowledged_at
            }),
            ("4 resolved (every assignment)", &|track| track.resolved_at),
            ("5 verified (closed)", &|track| track.verified_at),
            ("6 counted on the scorecard", &|track| track.scored_at),
        ];
        let mut elapsed = Duration::ZERO;
        for (stage, pick) in stages {
            let times: Vec<Instant> = tracks.iter().filter_map(|track| pick(track)).collect();
            let last = times
                .iter()
                .max()
                .map(|at| *at - started)
                .unwrap_or_default();
            stages_cases_per_second.insert(stage.to_string(), rate(times.len(), last));
            stages_count.insert(stage.to_string(), times.len());
            elapsed = elapsed.max(last);
        }
        let completed = tracks
            .iter()
            .filter(|track| track.scored_at.is_some())
            .count();
        LoadResult {
            cases,
            completed,
            elapsed_seconds: elapsed.as_secs_f64(),
            stages_cases_per_second,
            stages_count,
            submit_report_ms: Percentiles::of(&state.submit_latencies),
            report_to_notice_ms: Percentiles::of(&durations(&|track| {
                since(track.first_notice, track.sent)
            })),
            report_answered_to_notice_ms: Percentiles::of(&durations(&|track| {
                since(track.first_notice, track.answered)
            })),
            notice_legs_ms: notice_legs(&tracks),
            slowest_notices: slowest_notices(&tracks, started),
            acknowledge_to_event_ms: Percentiles::of(&state.ack_to_event),
            report_to_scorecard_ms: Percentiles::of(&durations(&|track| {
                since(track.scored_at, track.sent)
            })),
            arrival_lag_ms: Percentiles::of(&state.arrival_lag),
            errors: state.errors.clone(),
        }
    }
}

/// The legs of report → first Notice of the cases that have all four times (a time before the
/// previous one, from clock resolution, counts as zero).
fn notice_legs(tracks: &[&CaseTrack]) -> NoticeLegs {
    let mut legs: [Vec<Duration>; 3] = Default::default();
    for track in tracks {
        let Some(durations) = legs_of(track) else {
            continue;
        };
        for (leg, duration) in legs.iter_mut().zip(durations) {
            leg.push(duration);
        }
    }
    let [
        report_to_whistle_event,
        whistle_event_to_sent,
        sent_to_received,
    ] = legs;
    NoticeLegs {
        report_to_whistle_event: Percentiles::of(&report_to_whistle_event),
        whistle_event_to_sent: Percentiles::of(&whistle_event_to_sent),
        sent_to_received: Percentiles::of(&sent_to_received),
    }
}

/// One case's three legs of report → first Notice, when it has all four times.
fn legs_of(track: &CaseTrack) -> Option<[Duration; 3]> {
    let (sent, walls) = (track.sent_wall?, track.notice_walls?);
    let mut from = sent;
    Some(walls.map(|at| {
        let leg = (at - from).to_std().unwrap_or_default();
        from = at.max(from);
        leg
    }))
}

/// The [`SLOWEST`] cases by report → first Notice, slowest first.
fn slowest_notices(tracks: &[&CaseTrack], started: Instant) -> Vec<SlowNotice> {
    let mut timed: Vec<(Duration, &CaseTrack, Instant)> = tracks
        .iter()
        .filter_map(|track| {
            let (sent, notice) = (track.sent?, track.first_notice?);
            Some((notice.checked_duration_since(sent)?, *track, sent))
        })
        .collect();
    timed.sort_by_key(|(duration, _, _)| std::cmp::Reverse(*duration));
    timed
        .into_iter()
        .take(SLOWEST)
        .map(|(duration, track, sent)| SlowNotice {
            sent_after_s: sent.saturating_duration_since(started).as_secs_f64(),
            sent_at: track
                .sent_wall
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            ms: millis(duration),
            legs_ms: legs_of(track)
                .map(|legs| legs.into_iter().map(millis).collect())
                .unwrap_or_default(),
        })
        .collect()
}

async fn lead_verified(
    evaluation: &mut EvaluationServiceClient<Channel>,
    period: &str,
    token: Option<&str>,
) -> Result<u64, tonic::Status> {
    let scorecard = evaluation
        .get_scorecard(authorized(
            GetScorecardRequest {
                department_code: LEAD_DEPARTMENT.into(),
                period: period.into(),
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    Ok(scorecard.counts.map(|counts| counts.verified).unwrap_or(0))
}

/// Works one assignment (报到, 到场, 办结) and, after the case's last one, verifies the case.
#[derive(Clone)]
struct Worker {
    gateway: DepartmentGatewayClient<Channel>,
    dispatch: DispatchServiceClient<Channel>,
    state: Arc<Mutex<State>>,
    permits: Arc<Semaphore>,
    community: Option<String>,
}

impl Worker {
    async fn work(
        self,
        department: String,
        token: String,
        case_id: String,
        assignment_id: String,
        place: Place,
    ) {
        let state = &*self.state;
        let person = format!("{department}-bench");
        lock(state)
            .ack_sent
            .insert(assignment_id.clone(), Instant::now());
        let acknowledged = with_retries(state, "Acknowledge", 50, None, || {
            let mut gateway = self.gateway.clone();
            let request = authorized(
                AcknowledgeRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-ack"),
                    responsible_person: person.clone(),
                    ..Default::default()
                },
                Some(&token),
            );
            async move { gateway.acknowledge(request).await }
        })
        .await;
        if acknowledged.is_err() {
            return self.give_up(&case_id);
        }
        {
            let mut state = lock(state);
            if let Some(case) = state.cases.get_mut(&case_id) {
                case.acknowledged += 1;
                if Some(case.acknowledged) == case.expected {
                    case.acknowledged_at = Some(Instant::now());
                }
            }
        }
        let checked_in = with_retries(state, "CheckIn", 50, None, || {
            let mut gateway = self.gateway.clone();
            let request = authorized(
                CheckInRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-in"),
                    lat: place.lat + 0.0002,
                    lng: place.lng,
                    person: person.clone(),
                    datum: 0,
                },
                Some(&token),
            );
            async move { gateway.check_in(request).await }
        })
        .await;
        if checked_in.is_err() {
            return self.give_up(&case_id);
        }
        let resolved = with_retries(state, "Resolve", 50, None, || {
            let mut gateway = self.gateway.clone();
            let request = authorized(
                ResolveRequest {
                    assignment_id: assignment_id.clone(),
                    request_id: format!("{assignment_id}-done"),
                    resolution: "bench: done".into(),
                    evidence: vec![],
                },
                Some(&token),
            );
            async move { gateway.resolve(request).await }
        })
        .await;
        if resolved.is_err() {
            return self.give_up(&case_id);
        }
        let last = {
            let mut state = lock(state);
            match state.cases.get_mut(&case_id) {
                Some(case) => {
                    case.resolved += 1;
                    let last = Some(case.resolved) == case.expected;
                    if last {
                        case.resolved_at = Some(Instant::now());
                    }
                    last
                }
                None => false,
            }
        };
        if last {
            self.verify(case_id).await;
        }
    }

    /// 核查 passed. The last Resolve returned after dispatch committed, so the case awaits
    /// verification; FAILED_PRECONDITION is retried for a while all the same.
    async fn verify(&self, case_id: String) {
        let state = &*self.state;
        let verified = with_retries(
            state,
            "VerifyCase",
            500,
            Some(tonic::Code::FailedPrecondition),
            || {
                let mut dispatch = self.dispatch.clone();
                let request = authorized(
                    VerifyCaseRequest {
                        case_id: case_id.clone(),
                        // the verifier is the credential's subject
                        verifier_id: String::new(),
                        passed: true,
                        note: String::new(),
                        failed_assignment_ids: vec![],
                    },
                    self.community.as_deref(),
                );
                async move { dispatch.verify_case(request).await }
            },
        )
        .await;
        if verified.is_err() {
            return self.give_up(&case_id);
        }
        let mut state = lock(state);
        if let Some(case) = state.cases.get_mut(&case_id) {
            case.verified_at = Some(Instant::now());
        }
        // phases run one after the other: every case verified now belongs to the current one
        state.verified_order.push(case_id);
        self.permits.add_permits(1);
    }

    fn give_up(&self, case_id: &str) {
        let mut state = lock(&self.state);
        if state.failed_cases.insert(case_id.to_string()) {
            state.failed += 1;
            self.permits.add_permits(1);
        }
    }
}
