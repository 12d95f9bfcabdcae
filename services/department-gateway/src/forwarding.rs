//! Forwarding department actions to dispatch, with the department taken from the caller's
//! credentials and the caller's trace continued. Actions asked at the same moment travel together:
//! a queue hands whatever is waiting (up to [`MAX_BATCH`]) to one `RecordDepartmentActions` call,
//! with up to [`CALLS_IN_FLIGHT`] calls at once, so under load one call carries many actions and
//! with nothing else waiting an action goes alone, at once. Each action gets the answer
//! `RecordDepartmentAction` would have given it. A dispatch that does not know the batched call
//! yet (an older version during a rolling upgrade) answers UNIMPLEMENTED: the gateway then
//! forwards one call per action for a minute before it tries again.

use crate::actions::CheckedAction;
use crate::config::DispatchConfig;
use crate::error::GatewayError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::dispatch::{
    ForwardedDepartmentAction, RecordDepartmentActionRequest, RecordDepartmentActionsRequest,
    RecordedDepartmentAction, recorded_department_action::Outcome,
};
use whistle_proto::types::Assignment;

/// The most actions one call to dispatch carries (dispatch accepts up to 256; its writer takes 64
/// at a time by default).
pub const MAX_BATCH: usize = 64;
/// Calls to dispatch at once; what arrives meanwhile waits for the next call.
pub const CALLS_IN_FLIGHT: usize = 4;
/// How long the gateway forwards one call per action after dispatch answered UNIMPLEMENTED to the
/// batched call.
const ONE_BY_ONE_FOR: Duration = Duration::from_secs(60);

/// A client of dispatch that connects on first use and reconnects by itself, so the gateway starts
/// (and serves subscriptions) while dispatch is down.
#[derive(Debug, Clone)]
pub struct DispatchForwarder {
    queue: mpsc::Sender<Queued>,
}

type Client = DispatchServiceClient<whistle_platform::auth::WithBearer<TracedChannel>>;

/// A channel whose calls get a client span and carry its `traceparent`.
type TracedChannel = tonic_tracing_opentelemetry::middleware::client::OtelGrpcService<Channel>;

/// An action waiting for its call, and where its answer goes.
struct Queued {
    request: RecordDepartmentActionRequest,
    traceparent: Option<String>,
    answer: oneshot::Sender<Result<Assignment, tonic::Status>>,
}

impl DispatchForwarder {
    /// `service_token` is the gateway's own credential, sent on every call (none with auth off).
    /// Starts the task that sends the queued actions: call from within the runtime.
    pub fn new(config: &DispatchConfig, service_token: Option<String>) -> anyhow::Result<Self> {
        let bearer = match service_token {
            Some(token) => whistle_platform::auth::BearerLayer::new(token),
            None => whistle_platform::auth::BearerLayer::none(),
        };
        let mut endpoint = Endpoint::from_shared(config.url.clone())?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .tcp_nodelay(true);
        if let Some(tls) = config.tls()? {
            endpoint = endpoint.tls_config(tls)?;
        }
        let client = DispatchServiceClient::new(
            tower::ServiceBuilder::new()
                .layer(bearer)
                .layer(whistle_platform::grpc::client_trace_layer())
                .service(endpoint.connect_lazy()),
        );
        let (queue, waiting) = mpsc::channel(MAX_BATCH * CALLS_IN_FLIGHT * 4);
        tokio::spawn(send_batches(client, waiting));
        Ok(Self { queue })
    }

    /// Records `action` for `department_code`. Dispatch's refusals come back as they are;
    /// failing to reach it is [`GatewayError::DispatchUnreachable`].
    pub async fn forward(
        &self,
        department_code: &str,
        action: CheckedAction,
    ) -> Result<Assignment, GatewayError> {
        // keyed by department, so one department's request_id never meets another's at dispatch
        let action_id = match &action.request_id {
            Some(request_id) => crate::domain::action_id(department_code, request_id),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let request = RecordDepartmentActionRequest {
            action_id,
            assignment_id: action.assignment_id,
            department_code: department_code.to_string(),
            action: Some(action.action),
        };
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            request,
            traceparent: whistle_platform::telemetry::current_traceparent(),
            answer,
        };
        let stopped = || GatewayError::DispatchUnreachable("the forwarding task stopped".into());
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?.map_err(classify)
    }
}

/// Takes every action waiting once a call may start, and sends them together.
async fn send_batches(client: Client, mut waiting: mpsc::Receiver<Queued>) {
    let calls = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let one_by_one_until: Arc<Mutex<Option<Instant>>> = Arc::default();
    while let Some(first) = waiting.recv().await {
        let Ok(call) = calls.clone().acquire_owned().await else {
            return;
        };
        // what arrived while every call was out goes in this one
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let client = client.clone();
        let one_by_one_until = one_by_one_until.clone();
        tokio::spawn(async move {
            send(client, batch, &one_by_one_until).await;
            drop(call);
        });
    }
}

/// One `RecordDepartmentActions` call for `batch`, or one call per action while dispatch does not
/// know it.
async fn send(mut client: Client, batch: Vec<Queued>, one_by_one_until: &Mutex<Option<Instant>>) {
    let one_by_one = one_by_one_until
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some_and(|until| Instant::now() < until);
    if !one_by_one {
        let request = RecordDepartmentActionsRequest {
            actions: batch
                .iter()
                .map(|queued| ForwardedDepartmentAction {
                    action: Some(queued.request.clone()),
                    traceparent: queued.traceparent.clone().unwrap_or_default(),
                })
                .collect(),
        };
        // the call's own span belongs to the first action's trace; each action's work at dispatch
        // continues its own
        let span = tracing::info_span!("forward_department_actions", actions = batch.len());
        whistle_platform::telemetry::set_parent_from_traceparent(
            &span,
            batch[0].traceparent.as_deref(),
        );
        match client
            .record_department_actions(request)
            .instrument(span)
            .await
        {
            Ok(response) => {
                let results = response.into_inner().results;
                if results.len() != batch.len() {
                    let status = tonic::Status::internal(format!(
                        "dispatch answered {} results to {} actions",
                        results.len(),
                        batch.len()
                    ));
                    for queued in batch {
                        let _ = queued.answer.send(Err(status.clone()));
                    }
                    return;
                }
                for (queued, result) in batch.into_iter().zip(results) {
                    let _ = queued.answer.send(answer_of(result));
                }
                return;
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::warn!(
                    "dispatch does not know RecordDepartmentActions (an older version?): forwarding one call per action for {} s",
                    ONE_BY_ONE_FOR.as_secs()
                );
                *one_by_one_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Instant::now() + ONE_BY_ONE_FOR);
            }
            Err(status) => {
                for queued in batch {
                    let _ = queued.answer.send(Err(status.clone()));
                }
                return;
            }
        }
    }
    futures::future::join_all(batch.into_iter().map(|queued| {
        let mut client = client.clone();
        let span = tracing::info_span!("forward_department_action");
        whistle_platform::telemetry::set_parent_from_traceparent(
            &span,
            queued.traceparent.as_deref(),
        );
        async move {
            let result = client
                .record_department_action(tonic::Request::new(queued.request))
                .await
                .map(tonic::Response::into_inner);
            let _ = queued.answer.send(result);
        }
        .instrument(span)
    }))
    .await;
}

/// What `RecordDepartmentAction` would have answered, from one result of the batched call.
fn answer_of(result: RecordedDepartmentAction) -> Result<Assignment, tonic::Status> {
    match result.outcome {
        Some(Outcome::Assignment(assignment)) => Ok(assignment),
        Some(Outcome::Refusal(refusal)) => Err(refusal.into_status()),
        None => Err(tonic::Status::internal(
            "dispatch answered an action without an outcome",
        )),
    }
}

/// Which of dispatch's answers are the department's business and which mean dispatch was not reached.
fn classify(status: tonic::Status) -> GatewayError {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unimplemented => GatewayError::Refused(status),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            GatewayError::DispatchUnreachable(format!("{:?}: {}", status.code(), status.message()))
        }
        // the client reports a channel that could not connect as UNKNOWN "Service was not ready"
        Code::Unknown if is_transport_failure(&status) => {
            GatewayError::DispatchUnreachable(format!("{:?}: {}", status.code(), status.message()))
        }
        code => {
            GatewayError::Unexpected(format!("dispatch answered {code:?}: {}", status.message()))
        }
    }
}

fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    status.message().starts_with("Service was not ready")
        || status
            .source()
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use whistle_proto::dispatch as pb;
    use whistle_proto::dispatch::dispatch_service_server::{
        DispatchService, DispatchServiceServer,
    };

    /// A dispatch of the version before `RecordDepartmentActions` (a real gRPC server, on a free
    /// port): it answers the batched call UNIMPLEMENTED, as a server without the method does, and
    /// records single actions. It counts both.
    #[derive(Debug, Clone, Default)]
    struct OlderDispatch {
        batched: Arc<AtomicUsize>,
        single: Arc<AtomicUsize>,
    }

    /// The methods the test does not serve, written out as `tonic::async_trait` expands an
    /// `async fn` (it does not look inside macro calls).
    macro_rules! not_served {
        ($($method:ident: $request:ident => $response:path),* $(,)?) => {
            $(
                fn $method<'life0, 'async_trait>(
                    &'life0 self,
                    _: tonic::Request<pb::$request>,
                ) -> std::pin::Pin<
                    Box<
                        dyn std::future::Future<
                                Output = Result<tonic::Response<$response>, tonic::Status>,
                            > + Send
                            + 'async_trait,
                    >,
                >
                where
                    'life0: 'async_trait,
                    Self: 'async_trait,
                {
                    Box::pin(async { Err(tonic::Status::unimplemented("not in this test")) })
                }
            )*
        };
    }

    #[tonic::async_trait]
    impl DispatchService for OlderDispatch {
        not_served!(
            get_case: GetCaseRequest => pb::Case,
            list_cases: ListCasesRequest => pb::ListCasesResponse,
            accept_case: AcceptCaseRequest => pb::Case,
            reject_case: RejectCaseRequest => pb::Case,
            whistle_case: WhistleCaseRequest => pb::Case,
            resolve_locally: ResolveLocallyRequest => pb::Case,
            verify_case: VerifyCaseRequest => pb::Case,
            decide_extension: DecideExtensionRequest => pb::Case,
            decide_return: DecideReturnRequest => pb::Case,
            defer_case: DeferCaseRequest => pb::Case,
            resume_case: ResumeCaseRequest => pb::Case,
            put_route: PutRouteRequest => pb::Route,
            list_routes: ListRoutesRequest => pb::ListRoutesResponse,
        );

        async fn record_department_action(
            &self,
            request: tonic::Request<pb::RecordDepartmentActionRequest>,
        ) -> Result<tonic::Response<Assignment>, tonic::Status> {
            self.single.fetch_add(1, Ordering::SeqCst);
            let request = request.into_inner();
            Ok(tonic::Response::new(Assignment {
                assignment_id: request.assignment_id,
                department_code: request.department_code,
                ..Default::default()
            }))
        }

        async fn record_department_actions(
            &self,
            _: tonic::Request<pb::RecordDepartmentActionsRequest>,
        ) -> Result<tonic::Response<pb::RecordDepartmentActionsResponse>, tonic::Status> {
            self.batched.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unimplemented(
                "Operation is not implemented or not supported",
            ))
        }
    }

    fn acknowledge(assignment_id: &str) -> CheckedAction {
        CheckedAction {
            assignment_id: assignment_id.into(),
            request_id: Some(format!("request-{assignment_id}")),
            action: pb::record_department_action_request::Action::Acknowledge(
                pb::AcknowledgeAction {
                    responsible_person: "王".into(),
                    ..Default::default()
                },
            ),
        }
    }

    /// During a rolling upgrade the gateway may meet a dispatch without the batched call: every
    /// action is still answered, one call each, and the gateway stops asking for the batched call
    /// for a while instead of failing each batch first.
    #[tokio::test]
    async fn an_older_dispatch_gets_one_call_per_action() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("free port");
        let address = listener.local_addr().expect("address");
        let older = OlderDispatch::default();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatchServiceServer::new(older.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let forwarder = DispatchForwarder::new(
            &DispatchConfig {
                url: format!("http://{address}"),
                request_timeout_ms: 5_000,
                service_token_file: None,
                ca_file: None,
                cert_file: None,
                key_file: None,
            },
            None,
        )
        .expect("forwarder");
        let answers = futures::future::join_all(
            ["a-1", "a-2", "a-3"].map(|id| forwarder.forward("zw-sanitation", acknowledge(id))),
        )
        .await;
        for (answer, id) in answers.into_iter().zip(["a-1", "a-2", "a-3"]) {
            let assignment = answer.expect("answered by the single call");
            assert_eq!(assignment.assignment_id, id);
            assert_eq!(assignment.department_code, "zw-sanitation");
        }
        assert_eq!(older.single.load(Ordering::SeqCst), 3);
        let tried = older.batched.load(Ordering::SeqCst);
        assert!((1..=3).contains(&tried), "batched calls tried: {tried}");
        forwarder
            .forward("zw-sanitation", acknowledge("a-4"))
            .await
            .expect("answered");
        assert_eq!(older.single.load(Ordering::SeqCst), 4);
        assert_eq!(
            older.batched.load(Ordering::SeqCst),
            tried,
            "not asked again within the minute"
        );
        server.abort();
    }

    #[test]
    fn decisions_pass_through_and_transport_failures_are_unreachable() {
        let refused = classify(tonic::Status::failed_precondition("assignment is RESOLVED"));
        assert!(
            matches!(refused, GatewayError::Refused(ref status) if status.code() == Code::FailedPrecondition)
        );
        let status: tonic::Status = refused.into();
        assert_eq!(status.message(), "assignment is RESOLVED");

        for status in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::deadline_exceeded("timeout expired"),
            tonic::Status::unknown("Service was not ready: transport error"),
        ] {
            assert!(matches!(
                classify(status),
                GatewayError::DispatchUnreachable(_)
            ));
        }
        let internal: tonic::Status = classify(tonic::Status::internal("boom")).into();
        assert_eq!(internal.code(), Code::Internal);
        assert_eq!(internal.message(), "internal error");
    }
}
