//! Calls to other services. Every gRPC call one postmesh process makes to
//! another goes through [`Clients::channel`], which builds the one client
//! stack ([`build_stack`]) per target service and caches it: deadlines
//! propagated, a circuit breaker per target, retries of idempotent calls
//! within a budget, a concurrency limit that sheds load, and balancing over
//! the target's health-watched endpoints.
//!
//! The middle of the stack (deadline, breaker, retries, concurrency limit)
//! is `postmesh_client::resilience`, the same code the Rust SDK calls
//! through; this module adds what only a service has: the request context
//! and service tokens above it, discovery and health-watched endpoints
//! below it, and metrics.

mod endpoints;
mod layers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use postmesh_client::resilience::{self, Breaker, CircuitState, Methods, Observer};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use self::endpoints::{Discovery, EndpointStates};
use self::layers::{ContextLayer, Route};
use crate::auth::{MethodRules, ServiceTokens};
use crate::config::Config;

pub use postmesh_client::resilience::{BoxError, CallTimeout, is_failure};

/// A channel to one target service through the whole client stack. Cheap to
/// clone; use it with any generated client, e.g.
/// `UserServiceClient::new(clients.channel("user").await?)`.
pub type MeshChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, MeshError>;

/// The error of a [`MeshChannel`]: tonic finds the `Status` in its source
/// (an open breaker, a deadline, shed load) or maps the transport error.
pub type MeshError = resilience::StackError;

/// Settings of the stack, from `POSTMESH_CLIENT_*`.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Deadline, breaker, retries and concurrency limit.
    pub stack: resilience::Settings,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// DNS refresh period.
    pub dns_refresh: Duration,
}

impl ClientSettings {
    /// From the process configuration.
    pub fn from_config(config: &Config) -> Self {
        let method_timeouts = config
            .client_method_timeouts
            .iter()
            .map(|(method, timeout)| (format!("/{method}"), timeout))
            .collect();
        Self {
            stack: resilience::Settings {
                timeout: config.client_timeout,
                method_timeouts,
                failure_rate: config.client_breaker_failure_rate,
                window: config.client_breaker_window,
                minimum_calls: config.client_breaker_minimum_calls,
                open_for: config.client_breaker_open_for,
                probes: config.client_breaker_probes,
                retries: config.client_retries,
                retry_budget: config.client_retry_budget,
                retry_backoff: config.client_retry_backoff,
                concurrency: config.client_concurrency,
            },
            connect_timeout: config.client_connect_timeout,
            dns_refresh: config.client_dns_refresh,
        }
    }
}

/// Breaker changes and retries as metrics and logs.
struct MeshObserver;

impl Observer for MeshObserver {
    fn breaker_changed(&self, target: &str, from: CircuitState, to: CircuitState) {
        let level = match to {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        metrics::gauge!("postmesh_circuit_breaker_state", "target" => target.to_owned()).set(level);
        metrics::counter!(
            "postmesh_circuit_breaker_transitions_total",
            "target" => target.to_owned(),
            "to" => resilience::state_name(to)
        )
        .increment(1);
        resilience::log_breaker_change(target, from, to);
    }

    fn retrying(&self, _target: &str, path: &str) {
        metrics::counter!("postmesh_client_retries_total", "method" => path.to_owned()).increment(1);
    }
}

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
    methods: Arc<Methods>,
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
                methods: Arc::new(Methods::postmesh()),
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
                self.inner.methods.clone(),
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
            self.inner.methods.clone(),
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
            let breaker = resilience::state_name(target.breaker.state());
            (name.clone(), serde_json::json!({ "breaker": breaker, "endpoints": endpoints }))
        });
        serde_json::Value::Object(entries.collect())
    }

    /// The breaker state of `target`, if a channel to it exists.
    pub fn breaker_state(&self, target: &str) -> Option<&'static str> {
        let targets = self.inner.report.lock().unwrap_or_else(|e| e.into_inner());
        targets.get(target).map(|t| resilience::state_name(t.breaker.state()))
    }
}

/// The client stack to one target over `inner` (the routed endpoints, or
/// this process's own server), outermost layer first.
fn build_stack<S>(
    name: &str,
    inner: S,
    endpoints: EndpointStates,
    settings: &ClientSettings,
    methods: Arc<Methods>,
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
    // 2.–6. The stack every postmesh client shares (see
    //    `postmesh_client::resilience::build`): deadline, circuit breaker
    //    per target, deadline enforcement, retries of idempotent calls
    //    within a budget, load shedding and a concurrency limit.
    let shared = resilience::build(name, inner, &settings.stack, methods, Arc::new(MeshObserver))
        .map_err(|e| Status::internal(e.to_string()))?;
    MeshObserver.breaker_changed(name, CircuitState::Closed, CircuitState::Closed);

    let stack = ServiceBuilder::new()
        // 1. Context: the current request's id and trace travel on, its
        //    remaining deadline bounds the call, and the call is made as
        //    this service unless it carries a credential. First, so every
        //    later layer and the target see them.
        .layer(ContextLayer { rules, tokens })
        // 7. Below the shared stack: the endpoints, or this process's own
        //    server.
        .service(shared.service);

    Ok(Target { channel: BoxCloneSyncService::new(stack), breaker: shared.breaker, endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_follow_the_contract() {
        assert_eq!(health_name("user"), "postmesh.user.v1.UserService");
        assert_eq!(health_name("ai"), "postmesh.ai.v1.AiService");
    }
}
