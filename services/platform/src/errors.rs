//! One error table for the four services, in the manner of quickwit's `ServiceErrorCode`: each
//! service's error enum says which [`ServiceErrorCode`] a variant is, and [`to_status`] turns it into
//! the gRPC status a client reads. So every service answers the same situation with the same code:
//!
//! | code | gRPC | the caller should |
//! |---|---|---|
//! | `BadRequest` | INVALID_ARGUMENT, with a `google.rpc.BadRequest` detail naming the field | fix the field |
//! | `Unauthenticated` | UNAUTHENTICATED, naming what is missing or wrong | send a valid credential |
//! | `PermissionDenied` | PERMISSION_DENIED, naming the missing role or scope | ask for the right |
//! | `NotFound` | NOT_FOUND | check the id |
//! | `AlreadyExists` | ALREADY_EXISTS | use the existing record |
//! | `FailedPrecondition` | FAILED_PRECONDITION, naming the state | wait for the state, or stop |
//! | `Conflict` | ABORTED | retry the whole call |
//! | `ResourceExhausted` | RESOURCE_EXHAUSTED, with a `QuotaFailure` detail where a quota applies | slow down or release |
//! | `Unavailable` | UNAVAILABLE | retry with backoff |
//! | `Unimplemented` | UNIMPLEMENTED | not built yet (README.md) |
//! | `Internal` | INTERNAL "internal error" | report it; nothing internal is told |
//!
//! Database errors are classified once, in [`database_error_code`]: a lost connection, an exhausted
//! pool or a busy SQLite file is transient (UNAVAILABLE); a unique-key violation, a serialization
//! failure or a deadlock is a conflict (ABORTED, the call can be retried as a whole); anything else
//! (a missing table, a type mismatch, a constraint of the schema) is permanent and INTERNAL, because
//! retrying it cannot help. Database text never reaches the caller: it names tables and keys.

use sea_orm::{DbErr, RuntimeErr, SqlErr};
pub use tonic_types::ErrorDetails;
use tonic_types::StatusExt;

/// What kind of failure an error is, independent of the service that raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorCode {
    BadRequest,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Conflict,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    Internal,
}

impl ServiceErrorCode {
    /// The gRPC code of this kind of failure.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest => tonic::Code::InvalidArgument,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Conflict => tonic::Code::Aborted,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Unimplemented => tonic::Code::Unimplemented,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// Whether the same call may succeed later without any change by the caller.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Conflict | Self::Unavailable)
    }
}

/// An error a service answers a call with.
pub trait ServiceError: std::fmt::Display {
    /// Which row of the table this error is.
    fn error_code(&self) -> ServiceErrorCode;

    /// Structured detail for the client (`google.rpc.BadRequest`, `QuotaFailure`), if any.
    fn details(&self) -> Option<ErrorDetails> {
        None
    }

    /// Whether the text of this error holds internal detail (database text, a dependency's own
    /// message) that stays in the log. Internal errors are always private.
    fn is_private(&self) -> bool {
        false
    }

    /// What the caller reads instead of a private error's text; a fixed text per code when `None`.
    fn public_message(&self) -> Option<String> {
        None
    }
}

/// The status a client reads for `error`. Private and internal errors are logged here with their
/// full text and answered with a fixed one.
pub fn to_status<E: ServiceError + ?Sized>(error: &E) -> tonic::Status {
    let code = error.error_code();
    let message = match code {
        ServiceErrorCode::Internal => {
            tracing::error!(%error, "internal error");
            "internal error".to_string()
        }
        _ if error.is_private() => {
            let fixed = match code {
                ServiceErrorCode::Unavailable => {
                    tracing::warn!(%error, "dependency unavailable");
                    "temporarily unavailable, retry later"
                }
                ServiceErrorCode::Conflict => {
                    tracing::debug!(%error, "concurrent write");
                    "changed concurrently, retry"
                }
                _ => {
                    tracing::warn!(%error, "refused");
                    "refused"
                }
            };
            error.public_message().unwrap_or_else(|| fixed.to_string())
        }
        ServiceErrorCode::Unimplemented => format!("{error} is not built yet; see README.md"),
        _ => error.to_string(),
    };
    match error.details() {
        Some(details) => tonic::Status::with_error_details(code.grpc_code(), message, details),
        None => tonic::Status::new(code.grpc_code(), message),
    }
}

/// Classifies a database error: transient, a conflict worth retrying the whole call, or permanent.
pub fn database_error_code(error: &DbErr) -> ServiceErrorCode {
    if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return ServiceErrorCode::Conflict;
    }
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => ServiceErrorCode::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx_error))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_error)) => sqlx_error_code(sqlx_error),
        _ => ServiceErrorCode::Internal,
    }
}

fn sqlx_error_code(error: &sea_orm::sqlx::Error) -> ServiceErrorCode {
    use sea_orm::sqlx::Error;
    match error {
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed => {
            ServiceErrorCode::Unavailable
        }
        Error::Database(database_error) => {
            let code = database_error.code().map(|code| code.into_owned());
            match code.as_deref() {
                // PostgreSQL: serialization failure, deadlock
                Some("40001" | "40P01") => ServiceErrorCode::Conflict,
                // PostgreSQL: connection exceptions (08…), shutting down (57P0…), out of resources
                // (53…); SQLite: SQLITE_BUSY (5) and its extended codes, SQLITE_LOCKED (6)
                Some(code)
                    if code.starts_with("08")
                        || code.starts_with("57P0")
                        || code.starts_with("53")
                        || matches!(code, "5" | "6" | "261" | "517" | "262") =>
                {
                    ServiceErrorCode::Unavailable
                }
                _ => ServiceErrorCode::Internal,
            }
        }
        _ => ServiceErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Example {
        #[error("case c1 not found")]
        NotFound,
        #[error("database error: {0}")]
        Database(DbErr),
    }

    impl ServiceError for Example {
        fn error_code(&self) -> ServiceErrorCode {
            match self {
                Self::NotFound => ServiceErrorCode::NotFound,
                Self::Database(error) => database_error_code(error),
            }
        }

        fn is_private(&self) -> bool {
            matches!(self, Self::Database(_))
        }
    }

    #[test]
    fn client_errors_keep_their_text_and_database_text_never_leaves() {
        let status = to_status(&Example::NotFound);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "case c1 not found");

        let lost = Example::Database(DbErr::Conn(RuntimeErr::Internal(
            "connection to 10.0.0.7 refused for table whistle_secret".into(),
        )));
        let status = to_status(&lost);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("whistle_secret"), "{status:?}");

        let broken = Example::Database(DbErr::Custom("no such column: secret_column".into()));
        let status = to_status(&broken);
        assert_eq!(
            status.code(),
            tonic::Code::Internal,
            "permanent is not retryable"
        );
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn pool_exhaustion_is_transient_and_a_missing_record_is_not() {
        let timed_out = DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(
            database_error_code(&timed_out),
            ServiceErrorCode::Unavailable
        );
        assert!(database_error_code(&timed_out).is_transient());
        let missing = DbErr::RecordNotFound("case".into());
        assert_eq!(database_error_code(&missing), ServiceErrorCode::Internal);
        assert!(!ServiceErrorCode::Internal.is_transient());
    }

    #[tokio::test]
    async fn real_sqlite_errors_are_classified() {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .await
            .expect("create");
        db.execute_unprepared("INSERT INTO t (id) VALUES (1)")
            .await
            .expect("insert");
        let duplicate = db
            .execute_unprepared("INSERT INTO t (id) VALUES (1)")
            .await
            .expect_err("duplicate key");
        assert_eq!(database_error_code(&duplicate), ServiceErrorCode::Conflict);
        let missing_table = db
            .execute_unprepared("SELECT * FROM nowhere")
            .await
            .expect_err("no table");
        assert_eq!(
            database_error_code(&missing_table),
            ServiceErrorCode::Internal
        );
    }
}
