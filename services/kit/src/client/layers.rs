//! The layers of the client stack that only a service has: request
//! context and credentials on top, and below, failing fast when no
//! endpoint can take a call. The rest of the stack is
//! `postmesh_client::resilience`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use postmesh_client::resilience::{CallerDeadline, LOCAL_REFUSAL};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

use super::BoxError;
use crate::auth::{MethodRule, MethodRules, ServiceTokens};
use crate::telemetry::RequestContext;

type BoxFuture<T, E = BoxError> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Carries the current request's id, trace and remaining deadline on, and
/// identifies this process with a service token when the call has no
/// credential of its own (public RPCs go without).
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
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: From<Status> + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
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
            if let Some(deadline) = context.deadline {
                request.extensions_mut().insert(CallerDeadline(deadline));
            }
        }
        Box::pin(async move {
            if let Some(tokens) = tokens {
                let token = match tokens.token().await {
                    Ok(token) => token,
                    Err(status) => return Err(status.into()),
                };
                match HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(value) => {
                        request.headers_mut().insert(http::header::AUTHORIZATION, value);
                    }
                    Err(_) => {
                        return Err(Status::internal("service token is not a header value").into());
                    }
                }
            }
            inner.call(request).await
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
                        .insert(LOCAL_REFUSAL, tonic::metadata::MetadataValue::from_static("1"));
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
