//! The client stack against real servers on loopback: a callee whose
//! behaviour the test controls, killed and restarted on the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postmesh_kit::auth::Auth;
use postmesh_kit::client::Clients;
use postmesh_kit::server::{Bound, ServeOptions, serve_grpc};
use postmesh_kit::telemetry::RequestContext;
use postmesh_kit::testing::{ChaosProxy, TestEnv, eventually};
use postmesh_proto::postmesh::ai::v1::ai_service_client::AiServiceClient;
use postmesh_proto::postmesh::ai::v1::ai_service_server::{AiService, AiServiceServer};
use postmesh_proto::postmesh::ai::v1::{
    GenerateContentRequest, GenerateContentResponse, GetModelsStatusRequest, GetModelsStatusResponse,
};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

/// What the callee does with each call.
#[derive(Clone, Debug)]
enum Behaviour {
    Answer,
    Fail(Code),
    /// Waits for a permit from the gate (the test releases them).
    Hold,
}

/// The callee's shared state: behaviour and what it observed.
struct Callee {
    behaviour: Mutex<Behaviour>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seen_timeouts: Mutex<Vec<String>>,
    gate: Semaphore,
}

impl Callee {
    fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour: Mutex::new(behaviour),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            seen_timeouts: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        })
    }

    async fn handle<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(timeout) = request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()) {
            self.seen_timeouts.lock().await.push(timeout.to_owned());
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let behaviour = self.behaviour.lock().await.clone();
        let result = match behaviour {
            Behaviour::Answer => Ok(()),
            Behaviour::Fail(code) => Err(Status::new(code, "the callee says no")),
            Behaviour::Hold => {
                let _permit = self.gate.acquire().await.expect("gate open");
                Ok(())
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

struct Handler(Arc<Callee>);

#[tonic::async_trait]
impl AiService for Handler {
    async fn get_models_status(
        &self,
        request: Request<GetModelsStatusRequest>,
    ) -> Result<Response<GetModelsStatusResponse>, Status> {
        self.0.handle(&request).await?;
        Ok(Response::new(GetModelsStatusResponse::default()))
    }

    async fn generate_content(
        &self,
        request: Request<GenerateContentRequest>,
    ) -> Result<Response<GenerateContentResponse>, Status> {
        self.0.handle(&request).await?;
        Ok(Response::new(GenerateContentResponse::default()))
    }
}

/// A running callee; stops when dropped.
struct Running {
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_callee(callee: Arc<Callee>, auth: Auth, addr: SocketAddr) -> Running {
    let bound = Bound::bind(addr).await.expect("bind");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("postmesh.ai.v1.AiService", tonic_health::ServingStatus::Serving).await;
    let routes = Routes::new(health).add_service(AiServiceServer::new(Handler(callee)));
    let stop = CancellationToken::new();
    let options = ServeOptions { concurrency_per_connection: 1024, grace: Duration::from_millis(10) };
    tokio::spawn(serve_grpc(bound, routes, auth, stop.clone(), options));
    Running { stop }
}

/// A caller whose `ai` target is `addrs`, with the given client settings.
struct Caller {
    clients: Clients,
    auth: Auth,
    _env: TestEnv,
}

async fn caller(addrs: &[SocketAddr], settings: &[(&str, &str)]) -> Caller {
    let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let urls = urls.join(",");
    let mut vars = vec![
        ("POSTMESH_AI_URL", urls.as_str()),
        ("POSTMESH_CLIENT_BREAKER_WINDOW", "10"),
        ("POSTMESH_CLIENT_BREAKER_MINIMUM_CALLS", "4"),
        ("POSTMESH_CLIENT_BREAKER_OPEN_FOR", "300ms"),
        ("POSTMESH_CLIENT_BREAKER_PROBES", "1"),
        ("POSTMESH_CLIENT_RETRY_BACKOFF", "5ms"),
    ];
    vars.extend_from_slice(settings);
    let env = TestEnv::with(&vars).await;
    let clients = Clients::new(Arc::new(env.config.clone()), CancellationToken::new());
    let kv = postmesh_kit::kv::Kv::connect(&env.config).await.unwrap();
    // Holds the keys, so callee and caller share them as in `postmesh dev`.
    let auth = Auth::new(&env.config, kv, clients.clone(), "caller", true).unwrap();
    Caller { clients, auth, _env: env }
}

impl Caller {
    async fn ai(&self) -> AiServiceClient<postmesh_kit::client::MeshChannel> {
        AiServiceClient::new(self.clients.channel("ai").await.expect("channel"))
    }
}

/// Binds nothing: a free port nobody listens on (yet).
async fn free_port() -> SocketAddr {
    Bound::bind("127.0.0.1:0".parse().unwrap()).await.unwrap().addr()
}

#[tokio::test]
async fn a_dead_target_opens_the_breaker_and_its_return_closes_it() {
    // The callee is reached through a proxy: cutting it drops every
    // connection and refuses new ones, as a killed process does.
    let callee = Callee::new(Behaviour::Answer);
    let direct = free_port().await;
    let proxy = ChaosProxy::start(direct).await;
    let caller = caller(&[proxy.addr()], &[]).await;
    let _running = start_callee(callee.clone(), caller.auth.clone(), direct).await;
    let mut ai = caller.ai().await;
    ai.get_models_status(GetModelsStatusRequest::default()).await.expect("the callee answers");

    proxy.cut();
    // Failures accumulate until the breaker opens; then calls fail at once.
    let opened = eventually(Duration::from_secs(10), || {
        let mut ai = ai.clone();
        let clients = caller.clients.clone();
        async move {
            ai.get_models_status(GetModelsStatusRequest::default()).await.is_err()
                && clients.breaker_state("ai") == Some("open")
        }
    })
    .await;
    assert!(opened, "the breaker opens");
    let started = Instant::now();
    let status = ai.get_models_status(GetModelsStatusRequest::default()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(elapsed < Duration::from_millis(5), "fails fast: {elapsed:?}");
    assert!(status.message().contains("ai is failing"), "names the target: {}", status.message());
    let retry = status.get_error_details().retry_info().and_then(|r| r.retry_delay);
    assert_eq!(retry, Some(Duration::from_millis(300)), "says when to retry");

    // The callee comes back: half-open, a probe, closed.
    proxy.restore();
    let recovered = eventually(Duration::from_secs(10), || {
        let mut ai = ai.clone();
        async move { ai.get_models_status(GetModelsStatusRequest::default()).await.is_ok() }
    })
    .await;
    assert!(recovered, "calls succeed again");
    assert_eq!(caller.clients.breaker_state("ai"), Some("closed"));
    let report = caller.clients.report();
    assert_eq!(report["ai"]["breaker"], "closed", "{report}");
}

#[tokio::test]
async fn errors_about_the_request_never_open_the_breaker() {
    let addr = free_port().await;
    let caller = caller(&[addr], &[]).await;
    let callee = Callee::new(Behaviour::Fail(Code::InvalidArgument));
    let _running = start_callee(callee.clone(), caller.auth.clone(), addr).await;
    let mut ai = caller.ai().await;
    for _ in 0..40 {
        let status = ai.generate_content(GenerateContentRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "the callee's answer reaches the caller");
    }
    assert_eq!(callee.calls.load(Ordering::SeqCst), 40, "every call reached the callee");
    assert_eq!(caller.clients.breaker_state("ai"), Some("closed"));
}

#[tokio::test]
async fn the_callers_deadline_reaches_the_callee_and_is_enforced() {
    let addr = free_port().await;
    let caller = caller(&[addr], &[("POSTMESH_CLIENT_TIMEOUT", "2s")]).await;
    let callee = Callee::new(Behaviour::Hold);
    let _running = start_callee(callee.clone(), caller.auth.clone(), addr).await;
    let ai = caller.ai().await;

    // A request being served with 300 ms left calls the slow callee.
    let context = RequestContext {
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(300)),
        ..RequestContext::generate()
    };
    let started = Instant::now();
    let mut client = ai.clone();
    let status = context
        .scope(async move { client.get_models_status(GetModelsStatusRequest::default()).await })
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < Duration::from_millis(800), "the caller stops waiting at its deadline: {elapsed:?}");
    let seen = callee.seen_timeouts.lock().await.clone();
    let millis: u64 = seen[0].trim_end_matches('m').parse().expect("milliseconds");
    assert!(millis <= 300, "the callee saw the shorter timeout: {seen:?}");

    // Without an inherited deadline, the default (2 s) applies.
    let mut client = ai.clone();
    let call = tokio::spawn(async move { client.get_models_status(GetModelsStatusRequest::default()).await });
    let saw_default =
        eventually(Duration::from_secs(5), || async { callee.seen_timeouts.lock().await.len() == 2 }).await;
    assert!(saw_default, "the call without an inherited deadline reaches the callee");
    let millis: u64 = callee.seen_timeouts.lock().await[1].trim_end_matches('m').parse().unwrap();
    assert!((1500..=2000).contains(&millis), "{millis}");
    callee.gate.add_permits(10);
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test]
async fn calls_past_the_concurrency_limit_are_refused_at_once() {
    let addr = free_port().await;
    let caller = caller(&[addr], &[("POSTMESH_CLIENT_CONCURRENCY", "4")]).await;
    let callee = Callee::new(Behaviour::Hold);
    let _running = start_callee(callee.clone(), caller.auth.clone(), addr).await;
    let ai = caller.ai().await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = ai.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = client.generate_content(GenerateContentRequest::default()).await;
                (result, started.elapsed())
            })
        })
        .collect();
    let held =
        eventually(Duration::from_secs(5), || async { callee.in_flight.load(Ordering::SeqCst) == 4 }).await;
    assert!(held, "four calls reach the callee");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(callee.max_in_flight.load(Ordering::SeqCst), 4, "never more than the limit");
    callee.gate.add_permits(10);
    let mut refused = 0;
    for call in calls {
        let (result, elapsed) = call.await.unwrap();
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(elapsed < Duration::from_millis(100), "refused at once: {elapsed:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 6);
    assert_eq!(
        caller.clients.breaker_state("ai"),
        Some("closed"),
        "our own limit says nothing about the target"
    );
}

#[tokio::test]
async fn traffic_moves_to_the_live_replica() {
    let (direct_a, b) = (free_port().await, free_port().await);
    let proxy_a = ChaosProxy::start(direct_a).await;
    let a = proxy_a.addr();
    let caller = caller(&[a, b], &[]).await;
    let (callee_a, callee_b) = (Callee::new(Behaviour::Answer), Callee::new(Behaviour::Answer));
    let _running_a = start_callee(callee_a.clone(), caller.auth.clone(), direct_a).await;
    let _running_b = start_callee(callee_b.clone(), caller.auth.clone(), b).await;
    let mut ai = caller.ai().await;
    // Non-idempotent calls: nothing retries them, so routing alone decides.
    for _ in 0..40 {
        ai.generate_content(GenerateContentRequest::default()).await.expect("both replicas answer");
    }
    assert!(
        callee_a.calls.load(Ordering::SeqCst) > 0 && callee_b.calls.load(Ordering::SeqCst) > 0,
        "both took traffic"
    );

    proxy_a.cut();
    let b_before = callee_b.calls.load(Ordering::SeqCst);
    let mut failures = 0;
    for _ in 0..60 {
        if ai.generate_content(GenerateContentRequest::default()).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures <= 1, "at most the call that met the dead connection fails: {failures}");
    assert!(callee_b.calls.load(Ordering::SeqCst) - b_before >= 59, "the live replica took the traffic");
    let report = caller.clients.report();
    assert_eq!(report["ai"]["endpoints"][a.to_string()], "down", "{report}");
    assert_eq!(report["ai"]["endpoints"][b.to_string()], "up", "{report}");
}

#[tokio::test]
async fn only_idempotent_methods_are_retried() {
    let addr = free_port().await;
    let caller = caller(&[addr], &[("POSTMESH_CLIENT_RETRIES", "2")]).await;
    let callee = Callee::new(Behaviour::Fail(Code::Unavailable));
    let _running = start_callee(callee.clone(), caller.auth.clone(), addr).await;
    let mut ai = caller.ai().await;

    let status = ai.generate_content(GenerateContentRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(callee.calls.load(Ordering::SeqCst), 1, "GenerateContent is not idempotent: one attempt");

    let status = ai.get_models_status(GetModelsStatusRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        callee.calls.load(Ordering::SeqCst),
        1 + 3,
        "GetModelsStatus has no side effects: two retries"
    );
}

#[tokio::test]
async fn an_overloaded_server_answers_resource_exhausted_at_once() {
    let env = TestEnv::new().await;
    let auth = postmesh_kit::testing::auth(&env).await;
    let callee = Callee::new(Behaviour::Hold);
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bound.addr();
    let routes = Routes::new(AiServiceServer::new(Handler(callee.clone())));
    let options = ServeOptions { concurrency_per_connection: 2, grace: Duration::from_millis(10) };
    tokio::spawn(serve_grpc(bound, routes, auth.clone(), CancellationToken::new(), options));
    let token = postmesh_kit::testing::access_token(&auth, "u", "w", &[postmesh_kit::auth::Role::Editor]);

    // One connection, five calls at once: two are served, three shed.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut client = AiServiceClient::new(channel.clone());
            let mut request = Request::new(GenerateContentRequest::default());
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            tokio::spawn(async move {
                let started = Instant::now();
                (client.generate_content(request).await, started.elapsed())
            })
        })
        .collect();
    let held =
        eventually(Duration::from_secs(5), || async { callee.in_flight.load(Ordering::SeqCst) == 2 }).await;
    assert!(held);
    let mut shed = 0;
    let mut calls = calls;
    // The shed ones are already done; release the held ones after.
    tokio::time::sleep(Duration::from_millis(100)).await;
    callee.gate.add_permits(5);
    for call in calls.drain(..) {
        let (result, elapsed) = call.await.unwrap();
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(elapsed < Duration::from_millis(100), "{elapsed:?}");
            shed += 1;
        }
    }
    assert_eq!(shed, 3);
    assert_eq!(callee.max_in_flight.load(Ordering::SeqCst), 2);
}
