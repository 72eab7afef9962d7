//! Calls to other services. Every gRPC call one postmesh process makes to
//! another goes through [`Clients::channel`], which builds the one client
//! stack ([`build_stack`]) per target service and caches it: deadlines
//! propagated, a circuit breaker per target, retries of idempotent calls
//! within a budget, a concurrency limit that sheds load, and balancing over
//! the target's health-watched endpoints.

mod endpoints;
mod layers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
use tower_resilience_circuitbreaker::{
    CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState, SlidingWindowType,
};

use self::endpoints::{Discovery, EndpointStates};
use self::layers::{ContextLayer, DeadlineLayer, EnforceDeadlineLayer, RetryLayer, Route};
use crate::auth::{MethodRules, ServiceTokens};
use crate::config::{Config, MethodTimeouts};

/// Errors inside the stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel to one target service through the whole client stack. Cheap to
/// clone; use it with any generated client, e.g.
/// `UserServiceClient::new(clients.channel("user").await?)`.
pub type MeshChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, MeshError>;

/// Replaces the method's default deadline for one call, as a request
/// extension: long-lived streams (a live notification feed) outlast any
/// unary default. The caller's own deadline still bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeout(pub Duration);

/// The error of a [`MeshChannel`]: tonic finds the `Status` in its source
/// (an open breaker, a deadline, shed load) or maps the transport error.
/// A concrete type rather than a boxed trait object, because generic tonic
/// clients over a boxed error trip rustc's "not general enough" check.
#[derive(Debug)]
pub struct MeshError(BoxError);

impl std::fmt::Display for MeshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for MeshError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Metadata marking a refusal made by this process (not the target).
pub(crate) const LOCAL_REFUSAL: &str = "x-postmesh-local-refusal";

/// The gRPC status code of a response, when it carries one in its headers
/// (errors are sent trailers-only, so their code is there; a response
/// without one is, for unary calls, OK).
pub(crate) fn grpc_code<B>(response: &http::Response<B>) -> Option<tonic::Code> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// Codes that mean the target is in trouble (and count against its
/// breaker), as opposed to codes about the request (bad input, not found,
/// not allowed), which say the target works.
pub fn is_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | DeadlineExceeded | Internal | Unknown | ResourceExhausted | DataLoss)
}

/// How the breaker sees a call's outcome.
fn breaker_failure(result: &Result<http::Response<Body>, BoxError>) -> bool {
    match result {
        Ok(response) => grpc_code(response).is_some_and(is_failure),
        Err(err) => match err.downcast_ref::<Status>() {
            // Shed by our own concurrency limit: this process is busy, the
            // target may be fine.
            Some(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && status.metadata().get(LOCAL_REFUSAL).is_some() =>
            {
                false
            }
            Some(status) => is_failure(status.code()),
            None => true,
        },
    }
}

/// Settings of the stack, from `POSTMESH_CLIENT_*`.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Deadline of a call without one.
    pub timeout: Duration,
    /// Per-method deadlines.
    pub method_timeouts: MethodTimeouts,
    /// Failure rate opening a breaker.
    pub failure_rate: f64,
    /// Calls in the breaker window.
    pub window: usize,
    /// Calls before the rate counts.
    pub minimum_calls: usize,
    /// Open time before probing.
    pub open_for: Duration,
    /// Probe calls while half-open.
    pub probes: usize,
    /// Retries of idempotent calls.
    pub retries: u32,
    /// Retries as a share of calls.
    pub retry_budget: f32,
    /// First retry delay.
    pub retry_backoff: Duration,
    /// Calls in flight per target.
    pub concurrency: usize,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// DNS refresh period.
    pub dns_refresh: Duration,
}

impl ClientSettings {
    /// From the process configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            timeout: config.client_timeout,
            method_timeouts: config.client_method_timeouts.clone(),
            failure_rate: config.client_breaker_failure_rate,
            window: config.client_breaker_window,
            minimum_calls: config.client_breaker_minimum_calls,
            open_for: config.client_breaker_open_for,
            probes: config.client_breaker_probes,
            retries: config.client_retries,
            retry_budget: config.client_retry_budget,
            retry_backoff: config.client_retry_backoff,
            concurrency: config.client_concurrency,
            connect_timeout: config.client_connect_timeout,
            dns_refresh: config.client_dns_refresh,
        }
    }
}

type Breaker = CircuitBreakerHandle<
    tower_resilience_circuitbreaker::FnClassifier<fn(&Result<http::Response<Body>, BoxError>) -> bool>,
>;

struct Target {
    channel: MeshChannel,
    breaker: Breaker,
    endpoints: EndpointStates,
}

/// The client stacks of one process, one per target service.
#[derive(Clone)]
pub struct Clients {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    settings: ClientSettings,
    rules: Arc<MethodRules>,
    tokens: Arc<OnceLock<Arc<ServiceTokens>>>,
    targets: tokio::sync::Mutex<HashMap<String, Arc<Target>>>,
    report: Mutex<HashMap<String, Arc<Target>>>,
    /// Targets this process serves itself, reached without a socket.
    local: Mutex<HashMap<String, LocalService>>,
    shutdown: CancellationToken,
}

/// A gRPC server stack of this process as a tower service (see
/// [`crate::server::local_service`]).
pub type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

/// The gRPC service name a target's health is reported under.
fn health_name(target: &str) -> String {
    let mut chars = target.chars();
    let capitalized: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect();
    format!("postmesh.{target}.v1.{capitalized}Service")
}

impl Clients {
    /// Client stacks for the services named in `config`, stopping with
    /// `shutdown`.
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: ClientSettings::from_config(&config),
                config,
                rules: Arc::new(MethodRules::postmesh()),
                tokens: Arc::new(OnceLock::new()),
                targets: tokio::sync::Mutex::new(HashMap::new()),
                report: Mutex::new(HashMap::new()),
                local: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// Gives calls without a credential this process's service token.
    pub fn set_service_tokens(&self, tokens: Arc<ServiceTokens>) {
        let _ = self.inner.tokens.set(tokens);
    }

    /// Calls to `targets` go to `service`, this process's own server stack,
    /// instead of over a socket: the same layers (context, auth, handler)
    /// and the same client stack above it, without the network hop.
    pub async fn serve_locally(&self, targets: &[&str], service: LocalService) {
        let mut built = self.inner.targets.lock().await;
        let mut local = self.inner.local.lock().unwrap_or_else(|e| e.into_inner());
        for target in targets {
            built.remove(*target);
            local.insert((*target).to_owned(), service.clone());
        }
    }

    /// The channel to `target` (`user`, `content`, ...), built on first use.
    pub async fn channel(&self, target: &str) -> Result<MeshChannel, Status> {
        let mut targets = self.inner.targets.lock().await;
        if let Some(existing) = targets.get(target) {
            return Ok(existing.channel.clone());
        }
        let local = self.inner.local.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned();
        if let Some(service) = local {
            let built = build_stack(
                target,
                service,
                EndpointStates::default(),
                &self.inner.settings,
                self.inner.rules.clone(),
                self.inner.tokens.clone(),
            )?;
            return Ok(self.keep(&mut targets, target, built));
        }
        let urls = self.inner.config.service_url(target).ok_or_else(|| {
            Status::unavailable(format!(
                "no address for the {target} service: set POSTMESH_{}_URL",
                target.to_ascii_uppercase()
            ))
        })?;
        let discovery = Discovery {
            target: target.to_owned(),
            health_name: health_name(target),
            urls: urls.urls().to_vec(),
            connect_timeout: self.inner.settings.connect_timeout,
            refresh: self.inner.settings.dns_refresh,
        };
        // Innermost: tonic's balanced channel (power of two choices by
        // calls in flight) over the endpoints discovery finds and
        // health-watches. No endpoint up: fail now, with UNAVAILABLE,
        // rather than wait; one up: call it directly.
        let (channel, changes) = tonic::transport::Channel::balance_channel::<std::net::SocketAddr>(64);
        let endpoints = endpoints::discover(discovery, changes, self.inner.shutdown.clone()).await;
        let route = Route::new(channel, Arc::from(target), endpoints.clone());
        let built = build_stack(
            target,
            route,
            endpoints,
            &self.inner.settings,
            self.inner.rules.clone(),
            self.inner.tokens.clone(),
        )?;
        Ok(self.keep(&mut targets, target, built))
    }

    fn keep(&self, targets: &mut HashMap<String, Arc<Target>>, target: &str, built: Target) -> MeshChannel {
        let built = Arc::new(built);
        targets.insert(target.to_owned(), built.clone());
        self.inner.report.lock().unwrap_or_else(|e| e.into_inner()).insert(target.to_owned(), built.clone());
        built.channel.clone()
    }

    /// Breaker state and endpoints per target, for `/health/detailed`.
    pub fn report(&self) -> serde_json::Value {
        let targets = self.inner.report.lock().unwrap_or_else(|e| e.into_inner());
        let entries = targets.iter().map(|(name, target)| {
            let endpoints: serde_json::Map<String, serde_json::Value> = target
                .endpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(addr, state)| {
                    (addr.to_string(), serde_json::Value::from(if state.is_up() { "up" } else { "down" }))
                })
                .collect();
            let breaker = state_name(target.breaker.state());
            (name.clone(), serde_json::json!({ "breaker": breaker, "endpoints": endpoints }))
        });
        serde_json::Value::Object(entries.collect())
    }

    /// The breaker state of `target`, if a channel to it exists.
    pub fn breaker_state(&self, target: &str) -> Option<&'static str> {
        let targets = self.inner.report.lock().unwrap_or_else(|e| e.into_inner());
        targets.get(target).map(|t| state_name(t.breaker.state()))
    }
}

fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

fn record_transition(target: &str, from: CircuitState, to: CircuitState) {
    let level = match to {
        CircuitState::Closed => 0.0,
        CircuitState::HalfOpen => 1.0,
        CircuitState::Open => 2.0,
    };
    metrics::gauge!("postmesh_circuit_breaker_state", "target" => target.to_owned()).set(level);
    metrics::counter!("postmesh_circuit_breaker_transitions_total", "target" => target.to_owned(), "to" => state_name(to))
        .increment(1);
    match to {
        CircuitState::Open => tracing::warn!(
            target_service = target,
            from = state_name(from),
            "circuit breaker opened: calls fail fast"
        ),
        CircuitState::HalfOpen => {
            tracing::info!(target_service = target, "circuit breaker half-open: probing")
        }
        CircuitState::Closed => {
            tracing::info!(target_service = target, from = state_name(from), "circuit breaker closed")
        }
    }
}

/// The client stack to one target over `inner` (the routed endpoints, or
/// this process's own server), outermost layer first.
fn build_stack<S>(
    name: &str,
    inner: S,
    endpoints: EndpointStates,
    settings: &ClientSettings,
    rules: Arc<MethodRules>,
    tokens: Arc<OnceLock<Arc<ServiceTokens>>>,
) -> Result<Target, Status>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let target: Arc<str> = Arc::from(name);
    let target_for_shed = target.clone();
    let target_for_breaker = target.clone();
    let open_for = settings.open_for;
    let breaker_name = name.to_owned();
    let (breaker, handle) = CircuitBreakerLayer::builder()
        .name(name.to_owned())
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(settings.window)
        .minimum_number_of_calls(settings.minimum_calls)
        .failure_rate_threshold(settings.failure_rate)
        .wait_duration_in_open(settings.open_for)
        .permitted_calls_in_half_open(settings.probes)
        .failure_classifier(breaker_failure as fn(&Result<http::Response<Body>, BoxError>) -> bool)
        .on_state_transition(move |from, to| record_transition(&breaker_name, from, to))
        .build_with_handle()
        .map_err(|e| Status::internal(format!("circuit breaker settings: {e}")))?;
    record_transition(name, CircuitState::Closed, CircuitState::Closed);

    let stack = ServiceBuilder::new()
        // 1. Context: the current request's id and trace travel on, and the
        //    call is made as this service unless it carries a credential.
        //    First, so every later layer and the target see them.
        .layer(ContextLayer { rules: rules.clone(), tokens })
        // 2. Deadline: the caller's remaining deadline, or the method's
        //    default, sent as grpc-timeout. Before the breaker, so a call with
        //    no time left never touches the target's statistics.
        .layer(DeadlineLayer {
            default: settings.timeout,
            per_method: Arc::new(settings.method_timeouts.clone()),
            target: target.clone(),
        })
        // 3. Circuit breaker, one per target: after too many failures (by
        //    gRPC status, not only transport errors) calls fail at once with
        //    UNAVAILABLE and a RetryInfo naming when to try again. It sees a
        //    call's final outcome, after retries.
        .map_err(move |err: CircuitBreakerError<BoxError>| -> BoxError {
            match err {
                CircuitBreakerError::OpenCircuit => {
                    let status = <Status as tonic_types::StatusExt>::with_error_details(
                        tonic::Code::Unavailable,
                        format!("{target_for_breaker} is failing; calls to it are refused for now (circuit breaker open)"),
                        tonic_types::ErrorDetails::with_retry_info(Some(open_for)),
                    );
                    status.into()
                }
                CircuitBreakerError::Inner(err) => err,
            }
        })
        .layer(breaker)
        // 4. The deadline is enforced here, below the breaker, so a target
        //    too slow to answer counts as failing.
        .layer(EnforceDeadlineLayer { target: target.clone() })
        // 5. Retries: idempotent methods only, on UNAVAILABLE or transport
        //    errors, within a budget. Above the concurrency limit, so each
        //    attempt takes a slot.
        .layer(RetryLayer {
            rules,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, settings.retry_budget)),
            max_retries: settings.retries,
            backoff: settings.retry_backoff,
        })
        // 6. A bounded number of calls in flight to the target; past it,
        //    calls are refused at once (RESOURCE_EXHAUSTED) instead of
        //    queueing without bound.
        .map_err(move |err: BoxError| -> BoxError {
            if err.is::<tower::load_shed::error::Overloaded>() {
                let mut status = Status::resource_exhausted(format!("too many calls in flight to {target_for_shed}"));
                status.metadata_mut().insert(LOCAL_REFUSAL, tonic::metadata::MetadataValue::from_static("1"));
                status.into()
            } else {
                err
            }
        })
        .load_shed()
        .concurrency_limit(settings.concurrency)
        // 7. The endpoints, or this process's own server.
        .service(inner);

    Ok(Target {
        channel: BoxCloneSyncService::new(tower::util::MapErr::new(stack, MeshError)),
        breaker: handle,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trouble_counts_against_a_target() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Internal,
            tonic::Code::Unknown,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(is_failure(code), "{code:?}");
        }
        for code in [
            tonic::Code::Ok,
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::AlreadyExists,
            tonic::Code::FailedPrecondition,
            tonic::Code::Unimplemented,
        ] {
            assert!(!is_failure(code), "{code:?}");
        }
    }

    #[test]
    fn health_names_follow_the_contract() {
        assert_eq!(health_name("user"), "postmesh.user.v1.UserService");
        assert_eq!(health_name("ai"), "postmesh.ai.v1.AiService");
    }
}
