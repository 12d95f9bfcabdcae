//! Dispatch's errors and their one mapping to gRPC status codes.

use crate::domain::TransitionError;
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} was changed concurrently, retry")]
    Conflict(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl DispatchError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn unexpected(error: impl std::fmt::Display) -> Self {
        Self::Unexpected(error.to_string())
    }
}

impl From<TransitionError> for DispatchError {
    fn from(error: TransitionError) -> Self {
        Self::FailedPrecondition(error.to_string())
    }
}

impl From<DispatchError> for tonic::Status {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::InvalidArgument { .. } => {
                tonic::Status::invalid_argument(error.to_string())
            }
            DispatchError::NotFound(message) => tonic::Status::not_found(message),
            DispatchError::PermissionDenied(message) => tonic::Status::permission_denied(message),
            DispatchError::FailedPrecondition(message) => {
                tonic::Status::failed_precondition(message)
            }
            DispatchError::Conflict(_) => tonic::Status::aborted(error.to_string()),
            DispatchError::Unimplemented(what) => {
                tonic::Status::unimplemented(format!("{what} is not built yet; see README.md"))
            }
            DispatchError::Database(error) => {
                tracing::error!(%error, "database error");
                tonic::Status::unavailable("storage unavailable, retry later")
            }
            DispatchError::Unexpected(message) => {
                tracing::error!(%message, "unexpected error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
