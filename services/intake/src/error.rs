//! Intake's errors and their one mapping to gRPC status codes.

use sea_orm::DbErr;
use whistle_platform::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    InvalidArgument(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Not allowed in the current state, which the message names.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl IntakeError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldError::new(field, reason))
    }
}

impl From<FieldError> for IntakeError {
    fn from(error: FieldError) -> Self {
        Self::InvalidArgument(error)
    }
}

impl From<IntakeError> for tonic::Status {
    fn from(error: IntakeError) -> Self {
        match error {
            IntakeError::InvalidArgument(field) => field.to_status(),
            IntakeError::NotFound(message) => tonic::Status::not_found(message),
            IntakeError::AlreadyExists(message) => tonic::Status::already_exists(message),
            IntakeError::FailedPrecondition(message) => tonic::Status::failed_precondition(message),
            IntakeError::Database(error) => {
                tracing::error!(%error, "database error");
                tonic::Status::unavailable("storage unavailable, retry later")
            }
            IntakeError::Unexpected(message) => {
                tracing::error!(%message, "unexpected error");
                tonic::Status::internal("internal error")
            }
        }
    }
}
