//! The layers of the stack that postmesh writes itself: deadlines, and
//! retries with a budget. The circuit breaker, concurrency limit and load
//! shedding come from tower and tower-resilience.

use std::collections::HashMap;
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

use super::{
    BoxError, CallTimeout, CallerDeadline, LOCAL_REFUSAL, Methods, Observer, format_grpc_timeout, grpc_code,
    parse_grpc_timeout, timed_out,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The deadline a call must finish by, decided at the top of the stack and
/// enforced below the breaker.
#[derive(Debug, Clone, Copy)]
struct CallDeadline(Instant);

/// Decides the call's deadline: the method's default (or the call's
/// [`CallTimeout`]), never later than the caller's own deadline
/// ([`CallerDeadline`]) or what the call itself asked for (`grpc-timeout`,
/// as `tonic::Request::set_timeout` writes it). Sends it as `grpc-timeout`
/// so the target knows too.
#[derive(Clone)]
pub(super) struct DeadlineLayer {
    pub default: Duration,
    pub per_method: Arc<HashMap<String, Duration>>,
    pub target: Arc<str>,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(super) struct DeadlineService<S> {
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
        let method_default = match request.extensions().get::<CallTimeout>() {
            Some(CallTimeout(timeout)) => *timeout,
            None => self.layer.per_method.get(request.uri().path()).copied().unwrap_or(self.layer.default),
        };
        let mut deadline = now + method_default;
        if let Some(CallerDeadline(inherited)) = request.extensions().get::<CallerDeadline>() {
            deadline = deadline.min(*inherited);
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
/// breaker, so a target too slow to answer counts against it. A stream's
/// deadline covers the whole stream, not only its first message.
#[derive(Clone)]
pub(super) struct EnforceDeadlineLayer {
    pub target: Arc<str>,
    pub methods: Arc<Methods>,
}

impl<S> Layer<S> for EnforceDeadlineLayer {
    type Service = EnforceDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EnforceDeadline { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(super) struct EnforceDeadline<S> {
    inner: S,
    layer: EnforceDeadlineLayer,
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
        let streaming = self.layer.methods.is_server_streaming(request.uri().path());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let target = self.layer.target.clone();
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
            match (result, deadline) {
                (Err(err), _) if timed_out(&*err) => Err(late()),
                (Ok(response), Some(deadline)) if streaming && grpc_code(&response).is_none() => {
                    Ok(response.map(|body| Body::new(DeadlineBody::new(body, deadline, target))))
                }
                (other, _) => other,
            }
        })
    }
}

/// A response stream that ends with DEADLINE_EXCEEDED (as trailers, the
/// way a server ends a call) once its deadline passes. Dropping the inner
/// body cancels the call on the target.
struct DeadlineBody {
    inner: Option<Body>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    target: Arc<str>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, target: Arc<str>) -> Self {
        Self { inner: Some(inner), sleep: Box::pin(tokio::time::sleep_until(deadline)), target }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.inner = None;
        let status = Status::deadline_exceeded(format!(
            "{} did not finish the stream before the deadline",
            this.target
        ));
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(status.add_header(&mut trailers).map(|()| http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }
}

/// Retries calls to methods the contract marks idempotent (NO_SIDE_EFFECTS
/// or IDEMPOTENT) when they fail with UNAVAILABLE or on the transport, with
/// jittered, doubling back-off, while the budget allows: retries are a
/// bounded share of calls, so they cannot multiply an outage.
#[derive(Clone)]
pub(super) struct RetryLayer {
    pub methods: Arc<Methods>,
    pub budget: Arc<TpsBudget>,
    pub max_retries: u32,
    pub backoff: Duration,
    pub target: Arc<str>,
    pub observer: Arc<dyn Observer>,
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(super) struct RetryService<S> {
    inner: S,
    layer: RetryLayer,
}

/// Whether an outcome may be retried: UNAVAILABLE from the target, or a
/// transport failure (nothing reached the handler, or it is gone). Local
/// refusals (shed load, no endpoint up) are not retried.
fn retryable(result: &Result<Response<Body>, BoxError>) -> bool {
    match result {
        Ok(response) => grpc_code(response) == Some(tonic::Code::Unavailable),
        Err(err) => match err.downcast_ref::<Status>() {
            Some(status) => {
                status.code() == tonic::Code::Unavailable && status.metadata().get(LOCAL_REFUSAL).is_none()
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
        if !layer.methods.is_idempotent(request.uri().path()) {
            return Box::pin(async move { inner.call(request).await });
        }
        Box::pin(async move {
            // The body must be kept to send it again: the request of every
            // idempotent method is a single message.
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
                layer.observer.retrying(&layer.target, parts.uri.path());
                let jitter = delay.mul_f64(rand::random::<f64>() * 0.5);
                tokio::time::sleep(delay + jitter).await;
                delay *= 2;
            }
        })
    }
}
