//! Forwarding department actions to dispatch's `RecordDepartmentAction`, with the department taken
//! from the caller's credentials and the caller's trace continued.

use crate::actions::CheckedAction;
use crate::config::DispatchConfig;
use crate::error::GatewayError;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use whistle_proto::dispatch::RecordDepartmentActionRequest;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::types::Assignment;

/// A client of dispatch that connects on first use and reconnects by itself, so the gateway starts
/// (and serves subscriptions) while dispatch is down.
#[derive(Debug, Clone)]
pub struct DispatchForwarder {
    client: DispatchServiceClient<whistle_platform::auth::WithBearer<TracedChannel>>,
}

/// A channel whose calls get a client span and carry its `traceparent`.
type TracedChannel = tonic_tracing_opentelemetry::middleware::client::OtelGrpcService<Channel>;

impl DispatchForwarder {
    /// `service_token` is the gateway's own credential, sent on every call (none with auth off).
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
        Ok(Self {
            client: DispatchServiceClient::new(
                tower::ServiceBuilder::new()
                    .layer(bearer)
                    .layer(whistle_platform::grpc::client_trace_layer())
                    .service(endpoint.connect_lazy()),
            ),
        })
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
        let request = tonic::Request::new(RecordDepartmentActionRequest {
            action_id,
            assignment_id: action.assignment_id,
            department_code: department_code.to_string(),
            action: Some(action.action),
        });
        let mut client = self.client.clone();
        match client.record_department_action(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(classify(status)),
        }
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
