//! Dispatch's errors and their row in the platform's error table (`whistle_platform::errors`).

use crate::domain::{CaseError, ProgressError, TransitionError};
use sea_orm::DbErr;

use whistle_platform::errors::{
    ErrorDetails, ServiceError, ServiceErrorCode, database_error_code, to_status,
};
use whistle_platform::validation::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    InvalidArgument(FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another transaction changed what this one read; the use case is retried from the start
    /// (`dispatch.conflict_retries`) before the caller sees ABORTED.
    #[error("{0} was changed concurrently, retry")]
    Conflict(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("database error: {0}")]
    Database(DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl DispatchError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldError::new(field, reason))
    }

    pub fn unexpected(error: impl std::fmt::Display) -> Self {
        Self::Unexpected(error.to_string())
    }
}

impl From<FieldError> for DispatchError {
    fn from(error: FieldError) -> Self {
        Self::InvalidArgument(error)
    }
}

impl From<TransitionError> for DispatchError {
    fn from(error: TransitionError) -> Self {
        Self::FailedPrecondition(error.to_string())
    }
}

/// The aggregate's refusals: a state that does not allow the command is FAILED_PRECONDITION, an
/// assignment not on the case NOT_FOUND, another department's assignment PERMISSION_DENIED, a
/// field naming what the case cannot accept INVALID_ARGUMENT.
impl From<CaseError> for DispatchError {
    fn from(error: CaseError) -> Self {
        match error {
            CaseError::Refused(message) => Self::FailedPrecondition(message),
            CaseError::UnknownAssignment(id) => {
                Self::NotFound(format!("assignment {id} not found"))
            }
            error @ CaseError::NotAddressed { .. } => Self::PermissionDenied(error.to_string()),
            CaseError::Invalid { field, reason } => Self::invalid(field, reason),
        }
    }
}

impl From<ProgressError> for DispatchError {
    fn from(error: ProgressError) -> Self {
        Self::FailedPrecondition(error.to_string())
    }
}

/// A database error caused by a concurrent writer (a key written meanwhile, a PostgreSQL
/// serialization failure or deadlock) is a [`DispatchError::Conflict`], worth a retry; the rest
/// are [`DispatchError::Database`], transient or permanent as the platform's table classifies them.
impl From<DbErr> for DispatchError {
    fn from(error: DbErr) -> Self {
        if database_error_code(&error) == ServiceErrorCode::Conflict {
            // the database's text stays in the log: it names tables and keys
            tracing::debug!(%error, "concurrent write");
            return Self::Conflict("a record".into());
        }
        Self::Database(error)
    }
}

impl ServiceError for DispatchError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            Self::InvalidArgument(_) => ServiceErrorCode::BadRequest,
            Self::NotFound(_) => ServiceErrorCode::NotFound,
            Self::PermissionDenied(_) => ServiceErrorCode::PermissionDenied,
            Self::FailedPrecondition(_) => ServiceErrorCode::FailedPrecondition,
            Self::Conflict(_) => ServiceErrorCode::Conflict,
            Self::Unimplemented(_) => ServiceErrorCode::Unimplemented,
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

impl From<DispatchError> for tonic::Status {
    fn from(error: DispatchError) -> Self {
        to_status(&error)
    }
}
