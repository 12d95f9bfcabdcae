//! Dispatch's errors and their one mapping to gRPC status codes.

use crate::domain::{CaseError, ProgressError, TransitionError};
use sea_orm::{DbErr, SqlErr};
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
/// are [`DispatchError::Database`].
impl From<DbErr> for DispatchError {
    fn from(error: DbErr) -> Self {
        let unique_violation =
            matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)));
        let serialization_failure = matches!(
            &error,
            DbErr::Exec(sea_orm::RuntimeErr::SqlxError(sqlx_error))
                | DbErr::Query(sea_orm::RuntimeErr::SqlxError(sqlx_error))
                if sqlx_error
                    .as_database_error()
                    .and_then(|database_error| database_error.code())
                    .is_some_and(|code| matches!(code.as_ref(), "40001" | "40P01"))
        );
        if unique_violation || serialization_failure {
            // the database's text stays in the log: it names tables and keys
            tracing::debug!(%error, "concurrent write");
            return Self::Conflict("a record".into());
        }
        Self::Database(error)
    }
}

impl From<DispatchError> for tonic::Status {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::InvalidArgument(field) => field.to_status(),
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
