//! What a failed call says: the gRPC code, the message, and the
//! `google.rpc` details postmesh attaches (which fields were wrong, when to
//! try again).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// A failed call, or a client that could not be built.
///
/// Every generated method returns `Result<_, tonic::Status>`; `?` turns the
/// status into this type, whose helpers read the details postmesh sends.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", code_name(.status.code()), .status.message())]
pub struct Error {
    status: Status,
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code, e.g. `Code::InvalidArgument` or `Code::Unauthenticated`.
    pub fn code(&self) -> Code {
        self.status.code()
    }

    /// The message, for a person.
    pub fn message(&self) -> &str {
        self.status.message()
    }

    /// The status as tonic returned it, metadata included.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The details postmesh attached (`grpc-status-details-bin`), decoded.
    pub fn details(&self) -> ErrorDetails {
        self.status.get_error_details()
    }

    /// For INVALID_ARGUMENT: every field that was wrong and why (the
    /// `google.rpc.BadRequest` detail). Empty when there is none.
    pub fn field_violations(&self) -> Vec<FieldViolation> {
        self.details().bad_request().map(|b| b.field_violations.clone()).unwrap_or_default()
    }

    /// The violation of one field (`"email"`, `"target_account_ids"`), if any.
    pub fn field_violation(&self, field: &str) -> Option<FieldViolation> {
        self.field_violations().into_iter().find(|v| v.field == field)
    }

    /// When to try again, for limits, outages and an open circuit breaker
    /// (the `google.rpc.RetryInfo` detail).
    pub fn retry_after(&self) -> Option<Duration> {
        self.details().retry_info().and_then(|r| r.retry_delay)
    }

    /// Whether the call may succeed if made again later unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
        )
    }

    /// The status, taken out.
    pub fn into_status(self) -> Status {
        self.status
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self { status }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        error.status
    }
}

/// The code as the gRPC specification spells it (`INVALID_ARGUMENT`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violations_are_decoded_from_the_details() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid request: email: not an address",
            ErrorDetails::with_bad_request_violation("email", "not an address"),
        );
        let error = Error::from(status);
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.to_string(), "INVALID_ARGUMENT: invalid request: email: not an address");
        let violation = error.field_violation("email").expect("the email violation");
        assert_eq!(violation.description, "not an address");
        assert!(error.field_violation("password").is_none());
    }

    #[test]
    fn retry_info_is_read() {
        let status = Status::with_error_details(
            Code::Unavailable,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        let error = Error::from(status);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
        assert!(error.is_transient());
        assert!(Error::from(Status::not_found("gone")).retry_after().is_none());
    }
}
