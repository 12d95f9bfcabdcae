//! Evaluation's errors and their row in the platform's error table (`whistle_platform::errors`).

use sea_orm::DbErr;

use whistle_platform::errors::{
    ErrorDetails, ServiceError, ServiceErrorCode, database_error_code, to_status,
};
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

impl ServiceError for EvaluationError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::InvalidArgument(_) => ServiceErrorCode::BadRequest,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
            Self::AlreadyExists(_) => ServiceErrorCode::AlreadyExists,
            Self::PermissionDenied(_) => ServiceErrorCode::PermissionDenied,
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

impl From<EvaluationError> for tonic::Status {
    fn from(error: EvaluationError) -> Self {
        to_status(&error)
    }
}
