//! `postmesh-gateway`: the HTTP/JSON front door of the mesh. Every route
//! comes from a `google.api.http` annotation in the descriptor set, and
//! requests are transcoded to protobuf (both in `postmesh-transcoder`), called
//! over the process's client stack ([`call`]) with the caller's identity
//! exchanged for an internal token ([`identity`]), rate limited per caller
//! ([`limits`]), and answered as JSON, raw bytes (`google.api.HttpBody`) or
//! a stream ([`stream`]). Errors keep one shape ([`errors`]). Besides the
//! API it serves `/openapi.json` ([`openapi`]), health and metrics.
#![forbid(unsafe_code)]

pub mod call;
pub mod errors;
pub mod identity;
pub mod limits;
pub mod openapi;
pub mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use postmesh_kit::auth::{Auth, MethodRule, MethodRules};
use postmesh_kit::client::Clients;
use postmesh_kit::health::{Check, Health};
use postmesh_kit::telemetry::{REQUEST_ID_HEADER, RequestContext};
use postmesh_kit::{Config, Runtime};
use prost_reflect::DescriptorPool;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::errors::GatewayError;
use crate::identity::Identities;
use crate::limits::{Limiter, Verdict};
use postmesh_transcoder::routes::{self, Lookup, Route, RouteTable};
use postmesh_transcoder::transcode::{self, Payload, RequestParts};

/// Request headers passed on to services as gRPC metadata (besides the
/// credential and request context, which the gateway sets itself).
pub const FORWARDED_HEADERS: &[&str] = &[
    "accept-language",
    "idempotency-key",
    "last-event-id",
    "twitch-eventsub-message-id",
    "twitch-eventsub-message-retry",
    "twitch-eventsub-message-signature",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-type",
    "twitch-eventsub-subscription-type",
    "twitch-eventsub-subscription-version",
    "webhook-id",
    "webhook-signature",
    "webhook-timestamp",
];

/// Longest a streaming response stays open (clients reconnect after).
const STREAM_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// The services the gateway routes to, for readiness.
const BACKENDS: &[(&str, &str)] = &[
    ("user", "postmesh.user.v1.UserService"),
    ("content", "postmesh.content.v1.ContentService"),
    ("social", "postmesh.social.v1.SocialService"),
    ("analytics", "postmesh.analytics.v1.AnalyticsService"),
    ("ai", "postmesh.ai.v1.AiService"),
    ("notification", "postmesh.notification.v1.NotificationService"),
    ("webhook", "postmesh.webhook.v1.WebhookService"),
];

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    /// The contract's HTTP bindings are not servable.
    #[error(transparent)]
    Routes(#[from] routes::RouteError),
    /// The OpenAPI document cannot be rendered.
    #[error("openapi: {0}")]
    OpenApi(#[from] serde_json::Error),
}

/// The gateway's shared state.
#[derive(Clone)]
struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    routes: RouteTable,
    /// Per route, by [`Route::index`].
    metrics: Vec<RouteMetrics>,
    rules: MethodRules,
    pool: DescriptorPool,
    clients: Clients,
    auth: Auth,
    identities: Identities,
    limiter: Limiter,
    openapi: Bytes,
    request_timeout: Duration,
    max_body: u64,
    trusted_proxies: usize,
    forwarded: Vec<HeaderName>,
}

/// The gateway's HTTP routes over `runtime` (its client stack, auth, key-
/// value store and health), with the backends' health added to readiness.
pub fn router(runtime: &Runtime) -> Result<Router, GatewayStartError> {
    let pool =
        DescriptorPool::decode(postmesh_proto::FILE_DESCRIPTOR_SET).map_err(routes::RouteError::from)?;
    let rules = MethodRules::postmesh();
    // Internal RPCs are for services only, whatever their annotations say.
    let routes = RouteTable::from_pool(&pool, |rpc| {
        rules.rule(&format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())) != MethodRule::Internal
    })?;
    let openapi = Bytes::from(serde_json::to_vec(&openapi::document(&routes, &pool))?);
    add_backend_checks(&runtime.health, &runtime.clients);
    let config: &Config = &runtime.config;
    let mut forwarded: Vec<HeaderName> =
        FORWARDED_HEADERS.iter().map(|h| HeaderName::from_static(h)).collect();
    forwarded.extend(
        config.gateway_forward_headers.iter().filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
    );
    let metrics = routes
        .routes()
        .iter()
        .map(|r| RouteMetrics::new(&format!("{} {}", r.method, r.template.as_str()), r.method.as_str()))
        .collect();
    let gateway = Gateway {
        inner: Arc::new(Inner {
            metrics,
            routes,
            rules,
            pool,
            clients: runtime.clients.clone(),
            auth: runtime.auth.clone(),
            identities: Identities::new(runtime.auth.clone(), runtime.clients.clone()),
            limiter: Limiter::new(runtime.kv.clone(), config.gateway_rate_limits.clone()),
            openapi,
            request_timeout: config.gateway_request_timeout,
            max_body: config.gateway_max_body_bytes,
            trusted_proxies: config.gateway_trusted_proxies,
            forwarded,
        }),
    };
    let api = Router::new()
        .route("/openapi.json", get(openapi_document))
        .fallback(handle)
        .with_state(gateway.clone())
        .merge(postmesh_kit::admin::router(runtime.health.clone()));
    Ok(api.layer(
        ServiceBuilder::new()
            // Outermost: every answer, CORS refusals included, gets a
            // request id, an access log line and metrics.
            .layer(axum::middleware::from_fn(observe))
            // CORS answers preflights before routing would call them 405.
            .option_layer(cors(config))
            // gzip/br for clients that ask; never for event streams.
            .layer(CompressionLayer::new()),
    ))
}

fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = &config.gateway_cors_origins;
    if origins.list().is_empty() {
        return None;
    }
    let allow_origin = if origins.is_any() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.list().iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let header = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::ACCEPT_LANGUAGE,
                header("x-api-key"),
                header("idempotency-key"),
                header("last-event-id"),
                header("x-request-id"),
                header("traceparent"),
                header("grpc-timeout"),
            ])
            .expose_headers([
                header("x-request-id"),
                header("ratelimit-limit"),
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
                header("ratelimit-policy"),
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Readiness of the gateway: every service behind it answers SERVING.
fn add_backend_checks(health: &Health, clients: &Clients) {
    for (target, service) in BACKENDS {
        let clients = clients.clone();
        health.add_check(Check::downstream(format!("backend:{target}"), move || {
            let clients = clients.clone();
            async move {
                let channel = clients.channel(target).await.map_err(|s| s.message().to_owned())?;
                let request = tonic_health::pb::HealthCheckRequest { service: (*service).to_owned() };
                let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!("{service} is not serving"))
                }
            }
        }));
    }
}

/// The route an answer came from, with its metric handles (made once:
/// looking a labelled metric up per request costs more than the rest of
/// the bookkeeping).
#[derive(Clone)]
struct RouteMetrics {
    label: Arc<str>,
    /// Requests by status class, 1xx to 5xx.
    requests: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

impl RouteMetrics {
    fn new(label: &str, method: &str) -> Self {
        let counter = |class: &'static str| {
            metrics::counter!(
                "postmesh_gateway_requests_total",
                "route" => label.to_owned(),
                "method" => method.to_owned(),
                "status" => class,
            )
        };
        Self {
            label: Arc::from(label),
            requests: [counter("1xx"), counter("2xx"), counter("3xx"), counter("4xx"), counter("5xx")],
            duration: metrics::histogram!(
                "postmesh_gateway_request_duration_seconds",
                "route" => label.to_owned(),
                "method" => method.to_owned(),
            ),
        }
    }

    fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Request id, access log and metrics around every request.
async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let context = RequestContext::from_headers(request.headers());
    let request_id = context.request_id.clone();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let matched = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    request.extensions_mut().insert(context);
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let metrics = response.extensions().get::<RouteMetrics>().cloned().unwrap_or_else(|| {
        // The gateway's own endpoints and unmatched paths (labelled as
        // one, so scanners cannot grow the label set).
        let known = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ];
        let method = if known.contains(&method) { method.as_str() } else { "OTHER" };
        RouteMetrics::new(matched.as_deref().unwrap_or("unmatched"), method)
    });
    metrics.record(status, elapsed);
    let route = metrics.label;
    tracing::info!(
        target: "postmesh::access",
        method = %method,
        path = %path,
        route = %route,
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        request_id = %request_id,
        peer = ?peer,
        "request"
    );
    response
}

async fn openapi_document(State(gateway): State<Gateway>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], gateway.inner.openapi.clone()).into_response()
}

/// Every API route: look it up in the table, then serve it.
async fn handle(State(gateway): State<Gateway>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    // HEAD is GET without the body (hyper drops it).
    let method = if parts.method == Method::HEAD { Method::GET } else { parts.method.clone() };
    match gateway.inner.routes.lookup(&method, path) {
        Lookup::NotFound => GatewayError::not_found(&parts.method, path).into_response(),
        Lookup::MethodNotAllowed(allowed) => {
            GatewayError::method_not_allowed(&parts.method, path, &allowed).into_response()
        }
        Lookup::Found(route, variables) => {
            let mut response = match gateway.serve(route, variables, &parts, body).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            };
            response.extensions_mut().insert(gateway.inner.metrics[route.index].clone());
            response
        }
    }
}

impl Gateway {
    async fn serve(
        &self,
        route: &Route,
        variables: Vec<(Vec<String>, String)>,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Response, GatewayError> {
        let inner = &self.inner;
        let pool = &inner.pool;
        let failed = |status: tonic::Status| GatewayError::from_status(&status, pool);

        // Refuse an announced oversize body before doing any work.
        let announced =
            parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|length| length > inner.max_body) {
            discard(body, inner.max_body.saturating_mul(2)).await;
            return Err(GatewayError::payload_too_large(inner.max_body));
        }

        let client = client_address(parts, inner.trusted_proxies);
        let mut metadata = MetadataMap::new();
        let principal = if inner.rules.rule(route.grpc_path()) == MethodRule::Public {
            // Public routes carry the gateway's own identity, so services
            // trust the client address it forwards.
            let token = inner.auth.service_tokens().token().await.map_err(failed)?;
            metadata.insert("authorization", bearer_metadata(&token)?);
            format!("ip:{client}")
        } else {
            match inner.identities.identify(&parts.headers).await {
                Ok(Some(identity)) => {
                    let token = identity.authorization.to_str().unwrap_or_default();
                    metadata.insert(
                        "authorization",
                        token.parse().map_err(|_| {
                            GatewayError::internal("an internal token is not a metadata value")
                        })?,
                    );
                    identity.principal
                }
                Ok(None) => {
                    self.refuse_if_limited(route, &client).await?;
                    return Err(GatewayError::sign_in_first());
                }
                Err(status) => {
                    self.refuse_if_limited(route, &client).await?;
                    return Err(failed(status));
                }
            }
        };
        let verdict = inner.limiter.check(route, &principal).await;
        if let Some(refusal) = verdict.as_ref().and_then(Verdict::refusal) {
            return Err(refusal);
        }

        let body = read_body(body, inner.max_body).await?;
        let message = transcode::request_message(
            route,
            RequestParts {
                variables,
                query: parts.uri.query(),
                content_type: parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                body,
            },
        )
        .map_err(|err| match err {
            transcode::TranscodeError::UnsupportedMediaType(_) => {
                GatewayError::unsupported_media_type(&err.to_string())
            }
            transcode::TranscodeError::Invalid { field, description } => {
                GatewayError::invalid(&field, &description)
            }
        })?;

        if let Ok(value) = client.to_string().parse() {
            metadata.insert("x-forwarded-for", value);
        }
        for name in &inner.forwarded {
            for value in parts.headers.get_all(name) {
                if let (Ok(key), Ok(value)) = (
                    tonic::metadata::MetadataKey::from_bytes(name.as_str().as_bytes()),
                    value.to_str().map(str::parse::<tonic::metadata::MetadataValue<_>>),
                ) && let Ok(value) = value
                {
                    metadata.append(key, value);
                }
            }
        }

        let streaming = route.rpc.is_server_streaming();
        let mut context =
            parts.extensions.get::<RequestContext>().cloned().unwrap_or_else(RequestContext::generate);
        let limit = if streaming { STREAM_LIMIT } else { inner.request_timeout };
        let now = Instant::now();
        let deadline = context.deadline.map_or(now + limit, |asked| asked.min(now + limit));
        context.deadline = Some(deadline);
        let call = call::Call {
            message,
            metadata,
            timeout: streaming.then(|| deadline.saturating_duration_since(now)),
        };

        let mut response = if streaming {
            let sse = stream::wants_sse(&parts.headers);
            let stream =
                context.scope(call::server_streaming(&inner.clients, route, call)).await.map_err(failed)?;
            stream::response(route, pool, stream, sse)
        } else {
            let answer = context.scope(call::unary(&inner.clients, route, call)).await.map_err(failed)?;
            let payload = transcode::response_payload(route, &answer)
                .map_err(|e| GatewayError::internal(&format!("encoding the response: {e}")))?;
            match payload {
                Payload::Json(json) => {
                    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json)
                        .into_response()
                }
                Payload::Raw { content_type, data } => {
                    let mut response = Response::new(Body::from(data));
                    if let Ok(value) = HeaderValue::from_str(&content_type)
                        && !content_type.is_empty()
                    {
                        response.headers_mut().insert(header::CONTENT_TYPE, value);
                    }
                    response
                }
            }
        };
        if let Some(verdict) = verdict {
            verdict.write_headers(response.headers_mut());
        }
        Ok(response)
    }

    /// A caller without a valid credential spends its address's budget, so
    /// guessing credentials is limited too.
    async fn refuse_if_limited(&self, route: &Route, client: &IpAddr) -> Result<(), GatewayError> {
        match self
            .inner
            .limiter
            .check(route, &format!("ip:{client}"))
            .await
            .as_ref()
            .and_then(Verdict::refusal)
        {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

fn bearer_metadata(
    token: &str,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, GatewayError> {
    format!("Bearer {token}").parse().map_err(|_| GatewayError::internal("a token is not a metadata value"))
}

/// Reads and drops up to `at_most` bytes of a refused body, so a client
/// still sending it reads the answer instead of a reset connection (past
/// that, the connection is closed on it).
async fn discard(mut body: Body, at_most: u64) {
    let mut read = 0u64;
    while read <= at_most {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
}

/// Reads the body, refusing more than `limit` bytes with 413.
async fn read_body(body: Body, limit: u64) -> Result<Bytes, GatewayError> {
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::payload_too_large(limit))
        }
        Err(err) => Err(GatewayError::invalid("body", &format!("could not be read: {err}"))),
    }
}

/// The client's address: the TCP peer, or with `trusted` proxies in front,
/// the address that many hops back in `X-Forwarded-For`.
fn client_address(parts: &http::request::Parts, trusted: usize) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if trusted == 0 {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded_for(&parts.headers);
    hops.len().checked_sub(trusted).and_then(|at| hops.get(at).copied()).unwrap_or(peer)
}

fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect()
}
