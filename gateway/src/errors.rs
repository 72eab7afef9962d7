//! Error responses: `{code, message, details}` JSON with the HTTP status of
//! the gRPC code ([`postmesh_kit::error::http_status`], the table every
//! service's errors are designed around). A service's `google.rpc` details
//! (field violations, retry info, error info) are decoded from the
//! `grpc-status-details-bin` trailer and rendered as JSON with their
//! `@type`. Internal errors are logged and returned opaque.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use postmesh_client::code_name;
use postmesh_kit::error::http_status;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value as Json, json};
use tonic::{Code, Status};

use postmesh_transcoder::transcode::SerializeWith;

const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";
const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// An error answer of the gateway (boxed: it travels in `Result`s on the
/// request path, which stay a pointer wide).
#[derive(Debug, Clone)]
pub struct GatewayError(Box<Fields>);

#[derive(Debug, Clone)]
struct Fields {
    status: StatusCode,
    code: Code,
    message: String,
    details: Vec<Json>,
    headers: HeaderMap,
}

impl GatewayError {
    fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self(Box::new(Fields {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            headers: HeaderMap::new(),
        }))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    /// No route serves this path.
    pub fn not_found(method: &Method, path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, format!("no route for {method} {path}"))
    }

    /// The path exists, for other methods.
    pub fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Self {
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            format!("{method} is not allowed on {path}; allowed: {allow}"),
        );
        match HeaderValue::from_str(&allow) {
            Ok(value) => error.with_header(header::ALLOW, value),
            Err(_) => error,
        }
    }

    /// A request field is wrong (400 with a field violation).
    pub fn invalid(field: &str, description: &str) -> Self {
        let mut error =
            Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, format!("{field}: {description}"));
        error.0.details.push(json!({
            "@type": BAD_REQUEST,
            "field_violations": [{ "field": field, "description": description }],
        }));
        error
    }

    /// The body is larger than the gateway accepts.
    pub fn payload_too_large(limit: u64) -> Self {
        let mut error = Self::invalid("body", &format!("must be at most {limit} bytes"));
        error.0.status = StatusCode::PAYLOAD_TOO_LARGE;
        error
    }

    /// The body's media type is not one the route takes.
    pub fn unsupported_media_type(message: &str) -> Self {
        let mut error = Self::invalid("Content-Type", message);
        error.0.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        error.0.message = message.to_owned();
        error
    }

    /// Too many requests; `retry_after` until one would be accepted.
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            "rate limit reached; slow down",
        );
        error.0.details.push(json!({ "@type": RETRY_INFO, "retry_delay": format_duration(retry_after) }));
        error.with_header(header::RETRY_AFTER, HeaderValue::from(retry_seconds(retry_after)))
    }

    /// The answer for a failed call (or a failure of the gateway's own
    /// that carries a gRPC status).
    pub fn from_status(status: &Status, pool: &DescriptorPool) -> Self {
        let code = status.code();
        let http = StatusCode::from_u16(http_status(code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            tracing::error!(code = ?code, message = status.message(), "a service failed");
            return Self::new(http, code, "internal error");
        }
        let mut error = Self::new(http, code, status.message());
        let mut retry_after = None;
        for (type_url, detail) in decode_details(status.details(), pool) {
            if type_url == RETRY_INFO {
                retry_after = detail.get("retry_delay").and_then(Json::as_str).and_then(parse_duration);
            }
            error.0.details.push(detail);
        }
        if code == Code::Unauthenticated {
            let description = status.message().replace('"', "'");
            let challenge = format!(
                "Bearer realm=\"postmesh\", error=\"invalid_token\", error_description=\"{description}\""
            );
            let value = HeaderValue::from_str(&challenge)
                .unwrap_or(HeaderValue::from_static("Bearer realm=\"postmesh\""));
            error = error.with_header(header::WWW_AUTHENTICATE, value);
        }
        if let Some(delay) =
            retry_after.filter(|_| matches!(code, Code::ResourceExhausted | Code::Unavailable))
        {
            error = error.with_header(header::RETRY_AFTER, HeaderValue::from(retry_seconds(delay)));
        }
        error
    }

    /// A failure of the gateway itself: logged, answered opaque.
    pub fn internal(cause: &str) -> Self {
        tracing::error!(cause, "gateway failure");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, "internal error")
    }

    /// 401 for a request without a credential.
    pub fn sign_in_first() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "sign in first: send `Authorization: Bearer <token>` or `X-API-Key: <key>`",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"postmesh\""))
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: &'static str,
            message: &'a str,
            details: &'a [Json],
        }
        let body = Body { code: code_name(self.0.code), message: &self.0.message, details: &self.0.details };
        serde_json::to_string(&body)
            .unwrap_or_else(|_| r#"{"code":"INTERNAL","message":"internal error","details":[]}"#.into())
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = self.body();
        let Fields { status, headers, .. } = *self.0;
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        response.headers_mut().extend(headers);
        response
    }
}

/// `google.rpc.Status` details from the `grpc-status-details-bin` bytes,
/// each as `(type URL, JSON)`.
fn decode_details(bytes: &[u8], pool: &DescriptorPool) -> Vec<(String, Json)> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let Some(status_type) = pool.get_message_by_name("google.rpc.Status") else { return Vec::new() };
    let Ok(decoded) = DynamicMessage::decode(status_type, bytes) else { return Vec::new() };
    let Some(details) = decoded.get_field_by_name("details").and_then(|v| v.as_list().map(<[_]>::to_vec))
    else {
        return Vec::new();
    };
    details
        .iter()
        .filter_map(|value| value.as_message())
        .map(|any| {
            let type_url = any
                .get_field_by_name("type_url")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            // A type outside the pool is still named.
            let json =
                serde_json::to_value(SerializeWith(any)).unwrap_or_else(|_| json!({ "@type": type_url }));
            (type_url, json)
        })
        .collect()
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0).max(u64::from(delay.is_zero()))
}

/// A `google.protobuf.Duration` in its JSON form (`1.5s`).
fn format_duration(delay: Duration) -> String {
    if delay.subsec_nanos() == 0 {
        format!("{}s", delay.as_secs())
    } else {
        format!("{}s", delay.as_secs_f64())
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    text.strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}
