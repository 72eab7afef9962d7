//! Outbound: registered endpoints receive postmesh events signed per
//! Standard Webhooks, delivered through the job bus with a written-down
//! retry schedule, logged per attempt, retryable and replayable by hand,
//! disabled automatically when they keep failing, and guarded against
//! reaching internal addresses.
//!
//! Sources of messages: `TriggerEvent`, the internal `EmitEvent`, and the
//! mesh's events on the bus ([`fanout`]). Each message gets one delivery
//! per subscribed endpoint; each delivery's attempts are
//! `jobs.webhook.deliver` jobs handled by [`worker`].

mod emit;
mod endpoints;
mod fanout;
mod guard;
mod logs;
mod retention;
mod signing;
pub mod store;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use postmesh_kit::ServiceDeps;
use postmesh_kit::error::ApiError;
use postmesh_proto::postmesh::webhook::v1 as pb;

pub use guard::Guard;

/// The outbound half of the webhook service.
#[derive(Clone)]
pub struct Outbound {
    deps: ServiceDeps,
    guard: Guard,
    /// One client for every attempt: no redirects, no proxy, the guard as
    /// its resolver, the attempt timeout.
    http: reqwest::Client,
    /// Waits before the 2nd, 3rd, ... attempt.
    schedule: Arc<Vec<Duration>>,
}

impl Outbound {
    /// Builds the HTTP client and starts the delivery, replay and fan-out
    /// consumers.
    pub async fn start(deps: &ServiceDeps) -> Result<Self, postmesh_kit::bus::BusError> {
        let config = &deps.config;
        let guard = Guard::new(&config.webhook_ssrf_allowlist);
        let http = reqwest::Client::builder()
            // A 3xx is a failed attempt, never followed: a redirect could
            // lead past the guard's decision.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect to the target itself, unchecked.
            .no_proxy()
            .dns_resolver(guard.clone())
            .timeout(config.webhook_delivery_timeout)
            .connect_timeout(config.webhook_delivery_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("postmesh-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| postmesh_kit::bus::BusError::InvalidConsumer(format!("webhook HTTP client: {e}")))?;
        let outbound = Self {
            deps: deps.clone(),
            guard,
            http,
            schedule: Arc::new(config.webhook_retry_schedule.clone()),
        };
        worker::start(&outbound).await?;
        fanout::start(&outbound).await?;
        deps.tasks.spawn(retention::run(outbound.clone()));
        Ok(outbound)
    }
}

/// The event types postmesh itself emits, ordered by name.
pub fn event_types() -> pb::ListEventTypesResponse {
    let mut event_types: Vec<pb::EventType> = fanout::EVENT_TYPES
        .iter()
        .map(|(name, description)| pb::EventType { name: (*name).into(), description: (*description).into() })
        .collect();
    event_types.sort_by(|a, b| a.name.cmp(&b.name));
    pb::ListEventTypesResponse { event_types }
}

pub(crate) use postmesh_kit::db::{ms_of, timestamp_ms};

pub(crate) fn duration_ms(ms: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// `page_size` per the contract: default 50, larger than 200 is 200.
pub(crate) fn page_size(value: i32) -> Result<u64, ApiError> {
    match value {
        0 => Ok(50),
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        n => Ok((n as u64).min(200)),
    }
}

/// The context an endpoint's secrets are sealed under: a sealed value
/// opens only for the endpoint it was written for.
pub(crate) fn secret_context(endpoint_id: &str) -> String {
    format!("webhook-endpoint:{endpoint_id}")
}

/// Whether `value` is an event type: 1 to 100 of `a-z`, `0-9`, `_`, `.`.
pub(crate) fn is_event_type(value: &str) -> bool {
    (1..=100).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Whether the endpoint filters accept `event_type`.
pub(crate) fn accepts(filters: &[String], event_type: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|filter| match filter.strip_suffix(".*") {
            Some(prefix) => {
                event_type.len() > prefix.len() + 1
                    && event_type.starts_with(prefix)
                    && event_type.as_bytes()[prefix.len()] == b'.'
            }
            None => filter == event_type,
        })
}
