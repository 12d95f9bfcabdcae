//! Intake's errors and their row in the platform's error table (`whistle_platform::errors`).

use sea_orm::DbErr;

use whistle_platform::errors::{
    ErrorDetails, ServiceError, ServiceErrorCode, database_error_code, to_status,
};
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

impl ServiceError for IntakeError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::InvalidArgument(_) => ServiceErrorCode::BadRequest,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
            Self::AlreadyExists(_) => ServiceErrorCode::AlreadyExists,
            Self::FailedPrecondition(_) => ServiceErrorCode::FailedPrecondition,
            Self::Database(error) => database_error_code(error),
            Self::Unexpected(_) => ServiceErrorCode::Internal,
        }
    }

    fn details(&self) -> Option<ErrorDetails> {
        match self {
            Self::InvalidArgument(field) => Some(field.details()),
            _ => None,
        }
    }

    fn is_private(&self) -> bool {
        matches!(self, Self::Database(_) | Self::Unexpected(_))
    }
}

impl From<IntakeError> for tonic::Status {
    fn from(error: IntakeError) -> Self {
        to_status(&error)
    }
}
