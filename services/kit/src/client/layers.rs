//! The layers of the client stack that postmesh writes itself: request
//! context and credentials, deadlines, retries with a budget, and failing
//! fast when no endpoint can take a call. The circuit breaker, concurrency
//! limit and load shedding come from tower and tower-resilience.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use super::{BoxError, grpc_code};
use crate::auth::{MethodRule, MethodRules, ServiceTokens};
use crate::config::MethodTimeouts;
use crate::telemetry::{RequestContext, format_grpc_timeout, parse_grpc_timeout};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The deadline a call must finish by, decided at the top of the stack and
/// enforced below the breaker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallDeadline(pub Instant);

/// Carries the current request's id and trace on, and identifies this
/// process with a service token when the call has no credential of its own
/// (public RPCs go without).
#[derive(Clone)]
pub(crate) struct ContextLayer {
    pub rules: Arc<MethodRules>,
    pub tokens: Arc<std::sync::OnceLock<Arc<ServiceTokens>>>,
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct ContextService<S> {
    inner: S,
    layer: ContextLayer,
}

impl<S> Service<Request<Body>> for ContextService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let needs_token = !request.headers().contains_key(http::header::AUTHORIZATION)
            && !request.headers().contains_key("x-api-key")
            && layer.rules.rule(request.uri().path()) != MethodRule::Public;
        let tokens: Option<Arc<ServiceTokens>> = if needs_token { layer.tokens.get().cloned() } else { None };
        if let Some(context) = RequestContext::current() {
            context.write_headers(request.headers_mut());
        }
        Box::pin(async move {
            if let Some(tokens) = tokens {
                let token = match tokens.token().await {
                    Ok(token) => token,
                    Err(status) => return Err(BoxError::from(status)),
                };
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(value) => {
                        request.headers_mut().insert(http::header::AUTHORIZATION, value);
                    }
                    Err(_) => {
                        return Err(BoxError::from(Status::internal("service token is not a header value")));
                    }
                }
            }
            inner.call(request).await
        })
    }
}

/// Decides the call's deadline: the caller's remaining deadline (from the
/// request being served), the per-method default otherwise, and never more
/// than the call itself asked for. Sends it as `grpc-timeout` so the callee
/// knows too.
#[derive(Clone)]
pub(crate) struct DeadlineLayer {
    pub default: Duration,
    pub per_method: Arc<MethodTimeouts>,
    pub target: Arc<str>,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> Service<Request<Body>> for DeadlineService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let now = Instant::now();
        let method_default = match request.extensions().get::<super::CallTimeout>() {
            Some(super::CallTimeout(timeout)) => *timeout,
            None => self.layer.per_method.get(request.uri().path()).unwrap_or(self.layer.default),
        };
        let mut deadline = now + method_default;
        if let Some(inherited) = RequestContext::current().and_then(|c| c.deadline) {
            deadline = deadline.min(inherited);
        }
        if let Some(asked) =
            request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
        {
            deadline = deadline.min(now + asked);
        }
        let remaining = deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            let target = self.layer.target.clone();
            return Box::pin(async move {
                Err(Status::deadline_exceeded(format!(
                    "no time left to call {target}: the caller's deadline has passed"
                ))
                .into())
            });
        }
        if let Ok(value) = HeaderValue::from_str(&format_grpc_timeout(remaining)) {
            request.headers_mut().insert("grpc-timeout", value);
        }
        request.extensions_mut().insert(CallDeadline(deadline));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(request).await })
    }
}

/// Ends a call at its deadline with DEADLINE_EXCEEDED. Sits below the
/// breaker, so a target too slow to answer counts against it.
#[derive(Clone)]
pub(crate) struct EnforceDeadlineLayer {
    pub target: Arc<str>,
}

impl<S> Layer<S> for EnforceDeadlineLayer {
    type Service = EnforceDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EnforceDeadline { inner, target: self.target.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct EnforceDeadline<S> {
    inner: S,
    target: Arc<str>,
}

impl<S> Service<Request<Body>> for EnforceDeadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let deadline = request.extensions().get::<CallDeadline>().map(|d| d.0);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let target = self.target.clone();
        Box::pin(async move {
            let late = || -> BoxError {
                Status::deadline_exceeded(format!("{target} did not answer before the deadline")).into()
            };
            let call = inner.call(request);
            let result = match deadline {
                None => call.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                    Ok(result) => result,
                    Err(_) => Err(late()),
                },
            };
            // Should a channel enforce grpc-timeout itself, its timeout reads
            // the same to the caller.
            match result {
                Err(err) if super::endpoints::timed_out(&*err) => Err(late()),
                other => other,
            }
        })
    }
}

/// Retries calls to methods the contract marks idempotent (NO_SIDE_EFFECTS
/// or IDEMPOTENT) when they fail with UNAVAILABLE or on the transport, with
/// jittered, doubling back-off, while the budget allows: retries are a
/// bounded share of calls, so they cannot multiply an outage.
#[derive(Clone)]
pub(crate) struct RetryLayer {
    pub rules: Arc<MethodRules>,
    pub budget: Arc<TpsBudget>,
    pub max_retries: u32,
    pub backoff: Duration,
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct RetryService<S> {
    inner: S,
    layer: RetryLayer,
}

/// Whether an outcome may be retried: UNAVAILABLE from the target, or a
/// transport failure (nothing reached the handler, or it is gone). Local
/// refusals (shed load, an open breaker below) are not retried.
fn retryable(result: &Result<Response<Body>, BoxError>) -> bool {
    match result {
        Ok(response) => grpc_code(response) == Some(tonic::Code::Unavailable),
        Err(err) => match err.downcast_ref::<Status>() {
            Some(status) => {
                status.code() == tonic::Code::Unavailable
                    && status.metadata().get(super::LOCAL_REFUSAL).is_none()
            }
            None => err.downcast_ref::<tower::load_shed::error::Overloaded>().is_none(),
        },
    }
}

impl<S> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        layer.budget.deposit();
        if !layer.rules.idempotent(request.uri().path()) {
            return Box::pin(async move { inner.call(request).await });
        }
        Box::pin(async move {
            // The body must be kept to send it again: unary requests are
            // small, and streaming ones are never idempotent here.
            let (parts, body) = request.into_parts();
            let bytes: Bytes =
                body.collect().await.map_err(|e| Status::internal(format!("request body: {e}")))?.to_bytes();
            let rebuild = |bytes: &Bytes| {
                let mut request = Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone())
                    .version(parts.version)
                    .body(Body::new(http_body_util::Full::new(bytes.clone())))
                    .expect("parts of a valid request");
                *request.headers_mut() = parts.headers.clone();
                if let Some(deadline) = parts.extensions.get::<CallDeadline>() {
                    request.extensions_mut().insert(*deadline);
                }
                request
            };
            let mut attempt = 0u32;
            let mut delay = layer.backoff;
            loop {
                let result = inner.ready().await?.call(rebuild(&bytes)).await;
                if attempt >= layer.max_retries || !retryable(&result) || !layer.budget.withdraw() {
                    return result;
                }
                attempt += 1;
                metrics::counter!("postmesh_client_retries_total", "method" => parts.uri.path().to_owned())
                    .increment(1);
                let jitter = delay.mul_f64(rand::random::<f64>() * 0.5);
                tokio::time::sleep(delay + jitter).await;
                delay *= 2;
            }
        })
    }
}

/// Chooses how a call reaches the target: failed at once when no endpoint
/// is up (instead of waiting in the balancer for one), straight over the
/// endpoint's own channel when exactly one is up (balancing one endpoint
/// only costs time), through the balancer otherwise.
#[derive(Clone)]
pub(crate) struct Route<S> {
    balanced: S,
    target: Arc<str>,
    endpoints: super::endpoints::EndpointStates,
}

impl<S> Route<S> {
    pub(crate) fn new(balanced: S, target: Arc<str>, endpoints: super::endpoints::EndpointStates) -> Self {
        Self { balanced, target, endpoints }
    }
}

enum Path {
    None,
    Single(tonic::transport::Channel),
    Balanced,
}

impl<S> Service<Request<Body>> for Route<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.balanced.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            let mut up = endpoints.values().filter(|state| state.is_up());
            match (up.next(), up.next()) {
                (None, _) => Path::None,
                (Some(only), None) => Path::Single(only.channel.clone()),
                _ => Path::Balanced,
            }
        };
        match path {
            Path::None => {
                let target = self.target.clone();
                Box::pin(async move {
                    // Endpoint health is re-checked at least every second.
                    let mut status = <Status as tonic_types::StatusExt>::with_error_details(
                        tonic::Code::Unavailable,
                        format!("no endpoint of {target} is reachable"),
                        tonic_types::ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
                    );
                    status
                        .metadata_mut()
                        .insert(super::LOCAL_REFUSAL, tonic::metadata::MetadataValue::from_static("1"));
                    Err(status.into())
                })
            }
            Path::Single(mut channel) => Box::pin(async move {
                channel.ready().await?;
                Ok(channel.call(request).await?)
            }),
            Path::Balanced => {
                let call = self.balanced.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
        }
    }
}
