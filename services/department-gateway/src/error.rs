//! The gateway's errors and their one mapping to gRPC status codes.

use sea_orm::DbErr;
use tonic_types::{ErrorDetails, StatusExt};
use whistle_platform::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No credential, a malformed one, or one the gateway does not know.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    InvalidArgument(FieldError),
    /// The caller's department already holds every subscription it may; only its own count is told.
    #[error(
        "too many subscriptions: department {department_code} has {open} open, at most {limit} (subscriptions.max_per_department); close one before opening another"
    )]
    TooManySubscriptions {
        department_code: String,
        open: usize,
        limit: usize,
    },
    /// Dispatch refused the action (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
    /// FAILED_PRECONDITION, ...): its code and message are the department's answer.
    #[error("dispatch refused: {}", .0.message())]
    Refused(tonic::Status),
    /// Dispatch could not be reached or did not answer in time.
    #[error("dispatch unreachable: {0}")]
    DispatchUnreachable(String),
    /// The gateway is stopping; the caller should reconnect (to another replica).
    #[error("{0}")]
    ShuttingDown(String),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl GatewayError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldError::new(field, reason))
    }
}

impl From<FieldError> for GatewayError {
    fn from(error: FieldError) -> Self {
        Self::InvalidArgument(error)
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            GatewayError::InvalidArgument(field) => field.to_status(),
            GatewayError::TooManySubscriptions {
                ref department_code,
                limit,
                ..
            } => {
                let details = ErrorDetails::with_quota_failure_violation(
                    format!("department:{department_code}"),
                    format!(
                        "at most {limit} open subscriptions (subscriptions.max_per_department)"
                    ),
                );
                tonic::Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    error.to_string(),
                    details,
                )
            }
            GatewayError::Refused(status) => {
                tonic::Status::new(status.code(), status.message().to_string())
            }
            GatewayError::DispatchUnreachable(detail) => {
                tracing::warn!(%detail, "dispatch unreachable");
                tonic::Status::unavailable("dispatch unreachable")
            }
            GatewayError::ShuttingDown(message) => tonic::Status::unavailable(message),
            GatewayError::Database(error) => {
                tracing::error!(%error, "database error");
                tonic::Status::unavailable("storage unavailable, retry later")
            }
            GatewayError::Unexpected(message) => {
                tracing::error!(%message, "unexpected error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
