//! Evaluation's errors and their one mapping to gRPC status codes.

use sea_orm::DbErr;
use whistle_platform::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    #[error("{0}")]
    InvalidArgument(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this (a rater that is not the case's street or community).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well formed but the system is not in a state to accept it yet.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl EvaluationError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldError::new(field, reason))
    }
}

impl From<FieldError> for EvaluationError {
    fn from(error: FieldError) -> Self {
        Self::InvalidArgument(error)
    }
}

impl From<EvaluationError> for tonic::Status {
    fn from(error: EvaluationError) -> Self {
        match error {
            EvaluationError::InvalidArgument(field) => field.to_status(),
            EvaluationError::NotFound(message) => tonic::Status::not_found(message),
            EvaluationError::AlreadyExists(message) => tonic::Status::already_exists(message),
            EvaluationError::PermissionDenied(message) => tonic::Status::permission_denied(message),
            EvaluationError::FailedPrecondition(message) => {
                tonic::Status::failed_precondition(message)
            }
            EvaluationError::Database(error) => {
                tracing::error!(%error, "database error");
                tonic::Status::unavailable("storage unavailable, retry later")
            }
            EvaluationError::Unexpected(message) => {
                tracing::error!(%message, "unexpected error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
