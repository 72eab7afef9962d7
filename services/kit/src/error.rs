//! The error every postmesh service returns. One enum decides the gRPC code
//! (and through it the gateway's HTTP status) and the `google.rpc` details:
//! field violations for bad input, retry info for limits and outages.
//! Internal errors are logged with their cause and returned opaque.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// A failure a handler reports to its caller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: every violation, each naming its field.
    #[error("invalid request: {}", describe(.0))]
    Invalid(Vec<Violation>),
    /// No valid credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many attempts; try again after the delay.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// When a new attempt may succeed.
        retry_after: Duration,
    },
    /// A dependency is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another service's answer about the caller's request (its field
    /// violations, its NOT_FOUND), handed on unchanged. Internal errors of
    /// that service stay opaque: they arrive already as "internal error".
    #[error("{}", .0.message())]
    Passthrough(Status),
}

/// One field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `password` or `user.display_name`.
    pub field: String,
    /// What is wrong, for a person.
    pub description: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

fn describe(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl ApiError {
    /// Bad input in one field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }

    /// An unexpected failure with its cause (logged, not returned).
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Passthrough(status) => status.code(),
        }
    }
}

/// The HTTP status for a gRPC code: the standard table (as in
/// `google/rpc/code.proto` and grpc-gateway), the one the gateway uses.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let code = err.code();
        match err {
            ApiError::Invalid(violations) => {
                let fields: Vec<FieldViolation> = violations
                    .iter()
                    .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                    .collect();
                Status::with_error_details(
                    code,
                    format!("invalid request: {}", describe(&violations)),
                    ErrorDetails::with_bad_request(fields),
                )
            }
            ApiError::RateLimited { message, retry_after } => {
                Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(retry_after)))
            }
            ApiError::Unavailable(message) => Status::with_error_details(
                code,
                message,
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                Status::internal("internal error")
            }
            ApiError::Passthrough(status) => status,
            other => Status::new(code, other.to_string()),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Internal(format!("database: {err}"))
    }
}

impl From<crate::kv::KvError> for ApiError {
    fn from(err: crate::kv::KvError) -> Self {
        match err {
            // A limit the code asked for, not an outage.
            crate::kv::KvError::InvalidRateLimit(_) => Self::Internal(err.to_string()),
            crate::kv::KvError::Redis(_) => Self::Unavailable(format!("key-value store: {err}")),
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::InvalidArgument => Self::Invalid(vec![Violation::new("", message)]),
            _ => Self::Internal(format!("{:?}: {message}", status.code())),
        }
    }
}

/// Accumulates violations so a request reports every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation::new(field, description));
    }

    /// Keeps the value of `result`, or records its error against `field`.
    pub fn check<T, E: std::fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(field, err.to_string());
                None
            }
        }
    }

    /// `Err(Invalid)` if anything was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::Invalid(self.0)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_carries_field_violations() {
        let mut violations = Violations::new();
        violations.add("email", "is not an email address");
        violations.add("password", "must be at least 12 characters");
        let status: Status = violations.finish().unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<String> =
            details.bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
        assert_eq!(fields, vec!["email", "password"]);
        assert!(status.message().contains("email: is not an email address"));
    }

    #[test]
    fn internal_errors_are_opaque_and_limits_say_when_to_retry() {
        let status: Status = ApiError::internal("connection to 10.0.0.3 refused").into();
        assert_eq!(status.message(), "internal error");
        let status: Status =
            ApiError::RateLimited { message: "slow down".into(), retry_after: Duration::from_secs(8) }.into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(8))
        );
    }
}
