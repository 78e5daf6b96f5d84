//! gRPC handlers, one file per service, and what they share: the mapping
//! from storage errors to gRPC statuses, request validation and page tokens.

pub mod analysis;
pub mod audit;
pub mod convert;
pub mod crew;
pub mod fix;
pub mod log;
pub mod paging;
pub mod report;
pub mod stats;
pub mod task;
pub mod validate;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::storage::StorageError;

/// How long a client should wait before retrying a call that failed
/// because the database was busy.
const RETRY_DELAY: Duration = Duration::from_secs(1);

fn unavailable(message: &str) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        format!("{message}; retry after {} s", RETRY_DELAY.as_secs()),
        ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
    )
}

/// Maps a storage error to the status the client receives. Client errors carry
/// their own message; server faults are logged here, once, with the real
/// error, and the client gets a generic message with no SQL in it.
pub fn to_status(error: StorageError) -> Status {
    match error {
        StorageError::NotFound { resource, id } => {
            Status::not_found(format!("{resource} {id} not found"))
        }
        StorageError::FailedPrecondition(message) => Status::failed_precondition(message),
        StorageError::InvalidArgument(message) => Status::invalid_argument(message),
        StorageError::PoolTimeout(waited) => {
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "no database connection became free in time"
            );
            unavailable("the database is busy: no connection became free in time")
        }
        StorageError::Database(error) => database_status(error),
        StorageError::Task(message) => {
            tracing::error!(error = %message, "database task failed");
            Status::internal("internal error")
        }
    }
}

fn database_status(error: DieselError) -> Status {
    if let Some(kind) = error_kind(&error) {
        crate::metrics::METRICS.database_error(kind);
    }
    match &error {
        DieselError::NotFound => Status::not_found("record not found"),
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            tracing::info!(error = %error, "write refers to a missing record");
            Status::failed_precondition("the request refers to a record that does not exist")
        }
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            Status::already_exists("a record with the same unique key exists")
        }
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            tracing::info!(error = %error, "transaction conflicted with another one");
            Status::aborted("the transaction conflicted with another one; retry it")
        }
        DieselError::DatabaseError(_, info) if is_deadlock(info.message()) => {
            tracing::warn!(error = %error, "transaction ended to break a deadlock");
            Status::aborted("the transaction conflicted with another one; retry it")
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
            tracing::error!(error = %error, "database connection closed");
            unavailable("the database connection was lost")
        }
        DieselError::DatabaseError(_, info) if is_statement_timeout(info.message()) => {
            tracing::warn!(error = %error, "statement ran past the statement timeout");
            Status::deadline_exceeded("the database did not finish within the statement timeout")
        }
        DieselError::DatabaseError(_, info) if is_sqlite_busy(info.message()) => {
            tracing::warn!(error = %error, "database stayed locked past the busy timeout");
            unavailable("the database is busy")
        }
        _ => {
            tracing::error!(error = %error, "database error");
            Status::internal("internal database error")
        }
    }
}

/// Returns the `kind` label of `code_analyzer_db_errors_total`, or `None`
/// for a missing row, which is a result rather than an error.
fn error_kind(error: &DieselError) -> Option<&'static str> {
    Some(match error {
        DieselError::NotFound => return None,
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            "foreign_key_violation"
        }
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => "unique_violation",
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            "serialization_failure"
        }
        DieselError::DatabaseError(_, info) if is_deadlock(info.message()) => "deadlock",
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => "closed_connection",
        DieselError::DatabaseError(_, info) if is_statement_timeout(info.message()) => {
            "statement_timeout"
        }
        DieselError::DatabaseError(_, info) if is_sqlite_busy(info.message()) => "busy",
        _ => "other",
    })
}

/// PostgreSQL cancels a statement past `statement_timeout` with SQLSTATE
/// 57014, which Diesel reports only through the message.
fn is_statement_timeout(message: &str) -> bool {
    message.contains("statement timeout")
}

/// PostgreSQL ends one transaction of a deadlock with SQLSTATE 40P01, which
/// Diesel reports only through the message. Audited transactions lock in one
/// order, so this is rare, and the client may retry like a serialization
/// failure.
fn is_deadlock(message: &str) -> bool {
    message.starts_with("deadlock detected")
}

/// SQLite reports `SQLITE_BUSY` and `SQLITE_LOCKED` only through the message.
fn is_sqlite_busy(message: &str) -> bool {
    message.contains("database is locked") || message.contains("database table is locked")
}

/// Builds INVALID_ARGUMENT naming the field, with a `BadRequest` detail.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn conflicts_are_aborted() {
        let deadlock = database_error(
            DatabaseErrorKind::Unknown,
            "deadlock detected\nDETAIL: Process 1 waits for ShareLock on transaction 2",
        );
        let serialization = database_error(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access due to concurrent update",
        );
        for error in [deadlock, serialization] {
            let status = database_status(error);
            assert_eq!(status.code(), tonic::Code::Aborted);
            assert_eq!(
                status.message(),
                "the transaction conflicted with another one; retry it"
            );
        }
    }

    #[test]
    fn other_errors_are_generic() {
        let status = database_status(database_error(
            DatabaseErrorKind::Unknown,
            "relation \"log_entries\" does not exist",
        ));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal database error");
    }
}
