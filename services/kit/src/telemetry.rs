//! Logging and request context. `init` installs the tracing subscriber (text
//! or JSON) and the Prometheus recorder; [`RequestContext`] carries the
//! `x-request-id` and W3C `traceparent` of the call being served so that
//! outgoing gRPC calls, outbox messages and jobs carry them on.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Header (and gRPC metadata key) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global tracing subscriber and metrics recorder. Safe to call
/// more than once (tests start many servers in one process): later calls
/// keep the first subscriber.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    metrics_handle();
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); metrics
        // then go there and /metrics shows ours, empty but valid.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Identity of the request being served, propagated to everything it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Caller-supplied or generated request id.
    pub request_id: String,
    /// W3C `traceparent` for this hop.
    pub traceparent: String,
    /// When the caller stops waiting (from its `grpc-timeout`): calls made
    /// on its behalf must finish before then.
    pub deadline: Option<tokio::time::Instant>,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    /// A fresh context with a new request id and trace.
    pub fn generate() -> Self {
        Self {
            request_id: uuid::Uuid::now_v7().to_string(),
            traceparent: new_traceparent(None),
            deadline: None,
        }
    }

    /// The context from incoming headers, filling in what is missing or
    /// malformed. The trace id of a valid `traceparent` is kept; the span id
    /// is new, because this process is a new hop.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let trace_id = headers.get(TRACEPARENT_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_trace_id);
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| tokio::time::Instant::now() + timeout);
        Self { request_id, traceparent: new_traceparent(trace_id), deadline }
    }

    /// The context of the task's current request, if it runs inside one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The current context, or a new one for work that starts here (a
    /// scheduler tick, a job without headers).
    pub fn current_or_new() -> Self {
        Self::current().unwrap_or_else(Self::generate)
    }

    /// Runs `fut` with this context as the current one.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Writes the context into outgoing headers.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.traceparent) {
            headers.insert(TRACEPARENT_HEADER, v);
        }
    }
}

pub use postmesh_client::resilience::{format_grpc_timeout, parse_grpc_timeout};

/// Request ids are echoed into logs and headers: keep them short and plain.
fn is_valid_request_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Extracts the trace id from a version-00 `traceparent`.
fn parse_trace_id(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
    {
        Some(parts[1].to_ascii_lowercase())
    } else {
        None
    }
}

fn new_traceparent(trace_id: Option<String>) -> String {
    let trace_id = trace_id.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>() | 1));
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    format!("00-{trace_id}-{span_id}-01")
}

/// Tower layer for the gRPC server: establishes the [`RequestContext`],
/// opens a span per call, echoes `x-request-id`, and records call metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner }
    }
}

/// See [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for RequestContextService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let context = RequestContext::from_headers(request.headers());
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "grpc",
            method = %method,
            request_id = %context.request_id,
        );
        request.extensions_mut().insert(context.clone());
        let request_id = HeaderValue::from_str(&context.request_id).ok();
        let started = Instant::now();
        let future = context.scope(self.inner.call(request).instrument(span.clone()));
        Box::pin(async move {
            let result = future.await;
            let elapsed = started.elapsed();
            let code = match &result {
                // Errors are sent trailers-only, so the code is in the
                // headers; a response without one carries its code in the
                // trailers and is, for unary calls, OK.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            let (service, rpc) = split_method(&method);
            metrics::counter!(
                "postmesh_grpc_requests_total",
                "service" => service.to_owned(),
                "method" => rpc.to_owned(),
                "code" => format!("{code:?}"),
            )
            .increment(1);
            metrics::histogram!(
                "postmesh_grpc_request_duration_seconds",
                "service" => service.to_owned(),
                "method" => rpc.to_owned(),
            )
            .record(elapsed.as_secs_f64());
            span.in_scope(|| {
                tracing::debug!(code = ?code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "served");
            });
            result.map(|mut response| {
                if let Some(id) = request_id {
                    response.headers_mut().insert(REQUEST_ID_HEADER, id);
                }
                response
            })
        })
    }
}

fn split_method(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_incoming_ids_and_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("req-123"));
        headers.insert(
            TRACEPARENT_HEADER,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = RequestContext::from_headers(&headers);
        assert_eq!(context.request_id, "req-123");
        assert!(context.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!context.traceparent.contains("00f067aa0ba902b7"), "a new hop gets a new span id");
    }

    #[test]
    fn replaces_malformed_values() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has spaces\tand tabs"));
        headers.insert(TRACEPARENT_HEADER, HeaderValue::from_static("00-zz-01"));
        let context = RequestContext::from_headers(&headers);
        assert!(uuid::Uuid::parse_str(&context.request_id).is_ok());
        assert_eq!(parse_trace_id(&context.traceparent).map(|t| t.len()), Some(32));
    }

    #[tokio::test]
    async fn scope_makes_context_current() {
        assert!(RequestContext::current().is_none());
        let context = RequestContext::generate();
        let seen = context.clone().scope(async { RequestContext::current() }).await;
        assert_eq!(seen, Some(context));
    }
}
