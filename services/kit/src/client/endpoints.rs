//! Where a target service is: its configured URLs, each host re-resolved by
//! DNS so a Kubernetes headless service scales out and in without restarts,
//! and which of those endpoints can take calls right now.
//!
//! Each endpoint watches its server's `grpc.health.v1` stream for the target
//! service on a connection of its own. A killed process breaks the stream
//! and a draining one reports NOT_SERVING; either removes the endpoint from
//! the balancer at once, so calls go to the replicas that are left. When the
//! watch sees SERVING again, the endpoint is added back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Whether an endpoint is in the balancer, and its own channel (shared by
/// its health watch and by calls when it is the only endpoint up).
#[derive(Debug)]
pub(crate) struct EndpointState {
    up: AtomicBool,
    pub(crate) channel: Channel,
}

impl EndpointState {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// The endpoints of a target and whether each is up.
pub(crate) type EndpointStates = Arc<std::sync::Mutex<HashMap<SocketAddr, Arc<EndpointState>>>>;

/// Endpoint changes for tonic's balanced channel.
pub(crate) type Changes = mpsc::Sender<Change<SocketAddr, Endpoint>>;

/// How to reach a target.
#[derive(Clone)]
pub(crate) struct Discovery {
    pub target: String,
    pub health_name: String,
    pub urls: Vec<url::Url>,
    pub connect_timeout: Duration,
    pub refresh: Duration,
}

/// Resolves the target's hosts now and every `refresh` until `shutdown`,
/// adding and removing endpoints. Returns after the first resolution.
pub(crate) async fn discover(
    discovery: Discovery,
    changes: Changes,
    shutdown: CancellationToken,
) -> EndpointStates {
    let states: EndpointStates = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut known: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    refresh(&discovery, &changes, &mut known, &states, &shutdown).await;
    let out = states.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(discovery.refresh) => {}
            }
            refresh(&discovery, &changes, &mut known, &states, &shutdown).await;
        }
    });
    out
}

async fn resolve(urls: &[url::Url]) -> Vec<(SocketAddr, url::Url)> {
    let mut found = Vec::new();
    for url in urls {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => found.extend(addrs.map(|addr| (addr, url.clone()))),
            Err(err) => tracing::warn!(host, error = %err, "cannot resolve service host"),
        }
    }
    found
}

async fn refresh(
    discovery: &Discovery,
    changes: &Changes,
    known: &mut HashMap<SocketAddr, CancellationToken>,
    states: &EndpointStates,
    shutdown: &CancellationToken,
) {
    let resolved = resolve(&discovery.urls).await;
    if resolved.is_empty() && !known.is_empty() {
        // A failed lookup is not a reason to forget working endpoints.
        return;
    }
    for (addr, url) in &resolved {
        if known.contains_key(addr) {
            continue;
        }
        let Some(endpoint) = endpoint(discovery, *addr, url) else { continue };
        // Optimistic: in rotation at once; the watch corrects it.
        let state = Arc::new(EndpointState { up: AtomicBool::new(true), channel: endpoint.connect_lazy() });
        if changes.send(Change::Insert(*addr, endpoint.clone())).await.is_err() {
            return;
        }
        let stop = shutdown.child_token();
        tokio::spawn(watch_health(
            *addr,
            endpoint,
            discovery.health_name.clone(),
            state.clone(),
            changes.clone(),
            stop.clone(),
        ));
        states.lock().unwrap_or_else(|e| e.into_inner()).insert(*addr, state);
        known.insert(*addr, stop);
        tracing::debug!(target = %discovery.target, %addr, "endpoint added");
    }
    let gone: Vec<SocketAddr> =
        known.keys().filter(|a| !resolved.iter().any(|(r, _)| r == *a)).copied().collect();
    for addr in gone {
        if let Some(stop) = known.remove(&addr) {
            stop.cancel();
        }
        states.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
        let _ = changes.send(Change::Remove(addr)).await;
        tracing::debug!(target = %discovery.target, %addr, "endpoint removed");
    }
}

fn endpoint(discovery: &Discovery, addr: SocketAddr, url: &url::Url) -> Option<Endpoint> {
    let origin: http::Uri = url.as_str().trim_end_matches('/').parse().ok()?;
    Some(
        Endpoint::from_shared(format!("{}://{addr}", url.scheme()))
            .ok()?
            .origin(origin)
            .connect_timeout(discovery.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true),
    )
}

/// Follows the endpoint's health stream on the endpoint's own channel and
/// puts the endpoint in or out of the balancer as it changes; subscribes
/// again, with back-off, when the stream breaks.
async fn watch_health(
    addr: SocketAddr,
    endpoint: Endpoint,
    service: String,
    state: Arc<EndpointState>,
    changes: Changes,
    stop: CancellationToken,
) {
    let set = |up: bool| {
        let changes = changes.clone();
        let endpoint = endpoint.clone();
        let state = state.clone();
        async move {
            if state.up.swap(up, Ordering::SeqCst) == up {
                return;
            }
            let change = if up { Change::Insert(addr, endpoint) } else { Change::Remove(addr) };
            let _ = changes.send(change).await;
            tracing::info!(%addr, up, "endpoint health changed");
        }
    };
    let channel = state.channel.clone();
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let mut client = HealthClient::new(channel.clone());
        let watch = client.watch(HealthCheckRequest { service: service.clone() });
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            response = watch => response,
        };
        if let Ok(response) = response {
            let mut stream = response.into_inner();
            loop {
                let update = tokio::select! {
                    _ = stop.cancelled() => return,
                    update = stream.next() => update,
                };
                match update {
                    Some(Ok(update)) => {
                        set(update.status() == ServingStatus::Serving).await;
                        backoff = Duration::from_millis(50);
                    }
                    _ => break,
                }
            }
        }
        set(false).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
