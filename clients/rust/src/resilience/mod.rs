//! The client stack every call to postmesh goes through, from this SDK and
//! between the services themselves (`postmesh-kit` builds its per-target
//! channels with [`build`]): a default deadline sent as `grpc-timeout`, a
//! circuit breaker that judges the target by gRPC status, retries of the
//! methods the contract marks idempotent within a budget, and a concurrency
//! limit that sheds load instead of queueing.
//!
//! What sits around it differs: the SDK puts its credential on top and one
//! channel below; the services put request context and service tokens on
//! top and health-watched, balanced endpoints below.

mod layers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
pub use tower_resilience_circuitbreaker::CircuitState;
use tower_resilience_circuitbreaker::{
    CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, FnClassifier, SlidingWindowType,
};

use self::layers::{DeadlineLayer, EnforceDeadlineLayer, RetryLayer};

/// Errors inside the stack.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stack as one cloneable service.
pub type StackService = BoxCloneSyncService<Request<Body>, Response<Body>, StackError>;

/// The error of a [`StackService`]: tonic finds the `Status` in its source
/// (an open breaker, a deadline, shed load) or maps the transport error.
/// A concrete type rather than a boxed trait object, because generic tonic
/// clients over a boxed error trip rustc's "not general enough" check.
#[derive(Debug)]
pub struct StackError(pub BoxError);

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<Status> for StackError {
    fn from(status: Status) -> Self {
        Self(status.into())
    }
}

/// Replaces the method's default deadline for one call, as a request
/// extension: long-lived streams (a live notification feed) outlast any
/// unary default. A `grpc-timeout` the call carries still bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeout(pub Duration);

/// The deadline of the request a service is serving while it makes this
/// call, as a request extension: the call must not outlive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerDeadline(pub tokio::time::Instant);

/// Metadata marking a refusal made by the calling process (not the target).
pub const LOCAL_REFUSAL: &str = "x-postmesh-local-refusal";

/// The gRPC status code of a response, when it carries one in its headers
/// (errors are sent trailers-only, so their code is there; a response
/// without one is, for unary calls, OK).
pub fn grpc_code<B>(response: &Response<B>) -> Option<tonic::Code> {
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
fn breaker_failure(result: &Result<Response<Body>, BoxError>) -> bool {
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

/// Whether a call ended because its deadline passed (tonic's channel
/// enforces `grpc-timeout` itself).
pub fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (milliseconds, rounded up,
/// or microseconds below one).
pub fn format_grpc_timeout(timeout: Duration) -> String {
    let micros = timeout.as_micros();
    if micros < 1000 {
        format!("{}u", micros.max(1))
    } else {
        format!("{}m", micros.div_ceil(1000).min(99_999_999))
    }
}

/// What the contract says about each method that the stack needs: whether
/// calling it again is safe, and whether it answers with a stream.
#[derive(Debug, Clone, Default)]
pub struct Methods {
    /// Paths (`/package.Service/Method`) whose `idempotency_level` is
    /// NO_SIDE_EFFECTS or IDEMPOTENT.
    idempotent: HashSet<String>,
    /// Paths whose response is a stream.
    server_streaming: HashSet<String>,
}

impl Methods {
    /// Reads the methods of an encoded file descriptor set.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        use prost_types::method_options::IdempotencyLevel;
        let set = prost_types::FileDescriptorSet::decode(bytes)?;
        let mut methods = Self::default();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let level = method.options.as_ref().map(|o| o.idempotency_level()).unwrap_or_default();
                    if matches!(level, IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent) {
                        methods.idempotent.insert(path.clone());
                    }
                    if method.server_streaming() {
                        methods.server_streaming.insert(path);
                    }
                }
            }
        }
        Ok(methods)
    }

    /// The methods of the postmesh contract.
    pub fn postmesh() -> Self {
        Self::from_descriptor_set(postmesh_proto::FILE_DESCRIPTOR_SET).expect("the compiled contract decodes")
    }

    /// Whether the contract says calling the method again is safe, so a
    /// failed call may be retried.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent.contains(path)
    }

    /// Whether the method answers with a stream.
    pub fn is_server_streaming(&self, path: &str) -> bool {
        self.server_streaming.contains(path)
    }

    /// The paths of the methods that answer with a stream.
    pub fn server_streaming(&self) -> impl Iterator<Item = &str> {
        self.server_streaming.iter().map(String::as_str)
    }
}

/// Settings of the stack. The defaults are the mesh's own.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Deadline of a call that sets none and has no per-method default.
    pub timeout: Duration,
    /// Per-method deadlines, by path (`/package.Service/Method`).
    pub method_timeouts: HashMap<String, Duration>,
    /// Share of failed calls in the window that opens the breaker.
    pub failure_rate: f64,
    /// Calls in the breaker's window.
    pub window: usize,
    /// Calls before the failure rate counts.
    pub minimum_calls: usize,
    /// How long an open breaker refuses calls before probing.
    pub open_for: Duration,
    /// Probe calls let through while half-open.
    pub probes: usize,
    /// Retries of an idempotent call.
    pub retries: u32,
    /// Retries as a share of calls.
    pub retry_budget: f32,
    /// Delay before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Calls in flight at once; past it, calls are refused.
    pub concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            method_timeouts: HashMap::new(),
            failure_rate: 0.5,
            window: 20,
            minimum_calls: 5,
            open_for: Duration::from_secs(5),
            probes: 3,
            retries: 2,
            retry_budget: 0.2,
            retry_backoff: Duration::from_millis(25),
            concurrency: 512,
        }
    }
}

/// Hears what the stack does, for logs and metrics. The default methods
/// log breaker changes through `tracing`.
pub trait Observer: Send + Sync + 'static {
    /// The breaker of `target` changed state.
    fn breaker_changed(&self, target: &str, from: CircuitState, to: CircuitState) {
        log_breaker_change(target, from, to);
    }

    /// A call to `path` on `target` is about to be retried.
    fn retrying(&self, target: &str, path: &str) {
        let _ = (target, path);
    }
}

/// The observer that only logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogObserver;

impl Observer for LogObserver {}

/// Logs a breaker change once.
pub fn log_breaker_change(target: &str, from: CircuitState, to: CircuitState) {
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

/// A breaker state's name, as reports show it.
pub fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

type Classifier = FnClassifier<fn(&Result<Response<Body>, BoxError>) -> bool>;

/// A view of one target's breaker.
#[derive(Clone)]
pub struct Breaker(CircuitBreakerHandle<Classifier>);

impl Breaker {
    /// Whether calls go through (closed), are refused (open) or probe.
    pub fn state(&self) -> CircuitState {
        self.0.state()
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Breaker").field(&state_name(self.state())).finish()
    }
}

/// A built stack: the service to call, and its breaker.
pub struct Stack {
    /// Every call to the target goes through this.
    pub service: StackService,
    /// The target's breaker.
    pub breaker: Breaker,
}

/// The settings do not make a breaker.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker settings: {0}")]
pub struct SettingsError(String);

/// The stack to `target` (a name for messages and logs) over `inner`,
/// outermost layer first.
pub fn build<S>(
    target: &str,
    inner: S,
    settings: &Settings,
    methods: Arc<Methods>,
    observer: Arc<dyn Observer>,
) -> Result<Stack, SettingsError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let name: Arc<str> = Arc::from(target);
    let open_for = settings.open_for;
    let (name_for_shed, name_for_breaker, name_for_changes) = (name.clone(), name.clone(), name.clone());
    let observer_for_changes = observer.clone();
    let (breaker, handle) = CircuitBreakerLayer::builder()
        .name(target.to_owned())
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(settings.window)
        .minimum_number_of_calls(settings.minimum_calls)
        .failure_rate_threshold(settings.failure_rate)
        .wait_duration_in_open(settings.open_for)
        .permitted_calls_in_half_open(settings.probes)
        .failure_classifier(breaker_failure as fn(&Result<Response<Body>, BoxError>) -> bool)
        .on_state_transition(move |from, to| {
            observer_for_changes.breaker_changed(&name_for_changes, from, to)
        })
        .build_with_handle()
        .map_err(|e| SettingsError(e.to_string()))?;

    let stack = ServiceBuilder::new()
        // 1. Deadline: the call's own, the caller's remaining one, or the
        //    method's default, sent as grpc-timeout. Before the breaker, so
        //    a call with no time left never touches the target's statistics.
        .layer(DeadlineLayer {
            default: settings.timeout,
            per_method: Arc::new(settings.method_timeouts.clone()),
            target: name.clone(),
        })
        // 2. Circuit breaker, one per target: after too many failures (by
        //    gRPC status, not only transport errors) calls fail at once with
        //    UNAVAILABLE and a RetryInfo naming when to try again. It sees a
        //    call's final outcome, after retries.
        .map_err(move |err: CircuitBreakerError<BoxError>| -> BoxError {
            match err {
                CircuitBreakerError::OpenCircuit => {
                    let status = <Status as tonic_types::StatusExt>::with_error_details(
                        tonic::Code::Unavailable,
                        format!("{name_for_breaker} is failing; calls to it are refused for now (circuit breaker open)"),
                        tonic_types::ErrorDetails::with_retry_info(Some(open_for)),
                    );
                    status.into()
                }
                CircuitBreakerError::Inner(err) => err,
            }
        })
        .layer(breaker)
        // 3. The deadline is enforced here, below the breaker, so a target
        //    too slow to answer counts as failing.
        .layer(EnforceDeadlineLayer { target: name.clone(), methods: methods.clone() })
        // 4. Retries: idempotent methods only, on UNAVAILABLE or transport
        //    errors, within a budget. Above the concurrency limit, so each
        //    attempt takes a slot.
        .layer(RetryLayer {
            methods,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, settings.retry_budget)),
            max_retries: settings.retries,
            backoff: settings.retry_backoff,
            target: name,
            observer,
        })
        // 5. A bounded number of calls in flight to the target; past it,
        //    calls are refused at once (RESOURCE_EXHAUSTED) instead of
        //    queueing without bound.
        .map_err(move |err: BoxError| -> BoxError {
            if err.is::<tower::load_shed::error::Overloaded>() {
                let mut status = Status::resource_exhausted(format!("too many calls in flight to {name_for_shed}"));
                status.metadata_mut().insert(LOCAL_REFUSAL, tonic::metadata::MetadataValue::from_static("1"));
                status.into()
            } else {
                err
            }
        })
        .load_shed()
        .concurrency_limit(settings.concurrency)
        // 6. Whatever reaches the target.
        .service(inner);

    Ok(Stack {
        service: BoxCloneSyncService::new(tower::util::MapErr::new(stack, StackError)),
        breaker: Breaker(handle),
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
    fn idempotency_comes_from_the_contract() {
        let methods = Methods::postmesh();
        assert!(methods.is_idempotent("/postmesh.user.v1.UserService/GetJwks"), "NO_SIDE_EFFECTS");
        assert!(methods.is_idempotent("/postmesh.user.v1.UserService/RevokeApiKey"), "IDEMPOTENT");
        assert!(!methods.is_idempotent("/postmesh.user.v1.UserService/Register"));
        assert!(!methods.is_idempotent("/postmesh.content.v1.ContentService/CreatePost"));
    }

    #[test]
    fn streams_come_from_the_contract() {
        let methods = Methods::postmesh();
        let streams: HashSet<&str> = methods.server_streaming().collect();
        assert!(streams.contains("/postmesh.content.v1.ContentService/WatchPostStatus"));
        assert!(streams.contains("/postmesh.notification.v1.NotificationService/StreamNotifications"));
        assert!(!streams.contains("/postmesh.content.v1.ContentService/GetPostStatus"));
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(format_grpc_timeout(Duration::from_micros(1500)), "2m");
        assert_eq!(format_grpc_timeout(Duration::from_micros(10)), "10u");
    }
}
