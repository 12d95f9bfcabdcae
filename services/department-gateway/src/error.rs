//! The gateway's errors and their row in the platform's error table (`whistle_platform::errors`).

use sea_orm::DbErr;

use whistle_platform::errors::{
    ErrorDetails, ServiceError, ServiceErrorCode, database_error_code, to_status,
};
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

impl ServiceError for GatewayError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::Unauthenticated(_) => ServiceErrorCode::Unauthenticated,
            Self::InvalidArgument(_) => ServiceErrorCode::BadRequest,
            Self::TooManySubscriptions { .. } => ServiceErrorCode::ResourceExhausted,
            Self::Refused(_) | Self::DispatchUnreachable(_) | Self::ShuttingDown(_) => {
                ServiceErrorCode::Unavailable
            }
            Self::Database(error) => database_error_code(error),
            Self::Unexpected(_) => ServiceErrorCode::Internal,
        }
    }

    fn details(&self) -> Option<ErrorDetails> {
        match self {
            Self::InvalidArgument(field) => Some(field.details()),
            Self::TooManySubscriptions {
                department_code,
                limit,
                ..
            } => Some(ErrorDetails::with_quota_failure_violation(
                format!("department:{department_code}"),
                format!("at most {limit} open subscriptions (subscriptions.max_per_department)"),
            )),
            _ => None,
        }
    }

    fn is_private(&self) -> bool {
        matches!(
            self,
            Self::Database(_) | Self::Unexpected(_) | Self::DispatchUnreachable(_)
        )
    }

    fn public_message(&self) -> Option<String> {
        match self {
            Self::DispatchUnreachable(_) => Some("dispatch unreachable".into()),
            _ => None,
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(error: GatewayError) -> Self {
        match error {
            // dispatch's own answer (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) is the
            // department's, with its code and its details
            GatewayError::Refused(status) => tonic::Status::with_details(
                status.code(),
                status.message().to_string(),
                status.details().to_vec().into(),
            ),
            error => to_status(&error),
        }
    }
}
