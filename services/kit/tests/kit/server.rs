//! The gRPC server bootstrap: request context in and out, UNIMPLEMENTED
//! stubs, and a graceful shutdown that stops accepting but finishes calls.

use std::sync::Arc;
use std::time::Duration;

use postmesh_kit::auth::Role;
use postmesh_kit::server::{Bound, ServeOptions, serve_grpc};

fn options(grace: Duration) -> ServeOptions {
    ServeOptions { concurrency_per_connection: 64, grace }
}
use postmesh_kit::telemetry::RequestContext;
use postmesh_kit::testing::{TestEnv, access_token};
use postmesh_proto::postmesh::ai::v1::ai_service_client::AiServiceClient;
use postmesh_proto::postmesh::ai::v1::ai_service_server::{AiService, AiServiceServer};
use postmesh_proto::postmesh::ai::v1::{
    AnalyzeSentimentRequest, GetModelsStatusRequest, GetModelsStatusResponse,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// A service whose one implemented call reports the request context it
/// saw and then waits until released.
struct Slow {
    started: mpsc::UnboundedSender<Option<RequestContext>>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl AiService for Slow {
    async fn get_models_status(
        &self,
        _request: Request<GetModelsStatusRequest>,
    ) -> Result<Response<GetModelsStatusResponse>, Status> {
        let _ = self.started.send(RequestContext::current());
        self.release.notified().await;
        Ok(Response::new(GetModelsStatusResponse::default()))
    }
}

struct Running {
    addr: std::net::SocketAddr,
    token: String,
    _env: TestEnv,
    started: mpsc::UnboundedReceiver<Option<RequestContext>>,
    release: Arc<Notify>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start() -> Running {
    let (tx, started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let service = AiServiceServer::new(Slow { started: tx, release: release.clone() });
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bound.addr();
    let shutdown = CancellationToken::new();
    let env = TestEnv::new().await;
    let auth = postmesh_kit::testing::auth(&env).await;
    let token = access_token(&auth, "user-1", "workspace-1", &[Role::Editor]);
    let server = tokio::spawn(serve_grpc(
        bound,
        Routes::new(service),
        auth,
        shutdown.clone(),
        options(Duration::from_secs(10)),
    ));
    Running { addr, token, _env: env, started, release, shutdown, server }
}

impl Running {
    fn signed<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        request
    }
}

#[tokio::test]
async fn request_ids_are_kept_echoed_and_made_current() {
    let mut running = start().await;
    let mut client = AiServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let mut request = running.signed(GetModelsStatusRequest::default());
    request.metadata_mut().insert("x-request-id", "abc-123".parse().unwrap());
    request
        .metadata_mut()
        .insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    let call = tokio::spawn(async move { client.get_models_status(request).await });
    let seen = running.started.recv().await.unwrap().expect("handler runs inside a request context");
    assert_eq!(seen.request_id, "abc-123");
    assert!(seen.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "trace id carried over");
    running.release.notify_one();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "abc-123", "echoed to the caller");

    let mut client = AiServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let request = running.signed(GetModelsStatusRequest::default());
    let call = tokio::spawn(async move { client.get_models_status(request).await });
    let generated = running.started.recv().await.unwrap().unwrap();
    running.release.notify_one();
    let response = call.await.unwrap().unwrap();
    assert!(uuid::Uuid::parse_str(&generated.request_id).is_ok(), "one is generated when absent");
    assert_eq!(response.metadata().get("x-request-id").unwrap().to_str().unwrap(), generated.request_id);
    running.shutdown.cancel();
}

#[tokio::test]
async fn rpcs_not_built_yet_answer_unimplemented() {
    let running = start().await;
    let mut client = AiServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let status =
        client.analyze_sentiment(running.signed(AnalyzeSentimentRequest::default())).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    running.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_in_flight_calls() {
    let mut running = start().await;
    let mut client = AiServiceClient::connect(format!("http://{}", running.addr)).await.unwrap();
    let request = running.signed(GetModelsStatusRequest::default());
    let call = tokio::spawn(async move { client.get_models_status(request).await });
    running.started.recv().await.unwrap();

    running.shutdown.cancel();
    let addr = running.addr;
    let refused = postmesh_kit::testing::eventually(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener closes on shutdown");
    assert!(!call.is_finished(), "the in-flight call is still being served");

    running.release.notify_one();
    let response = tokio::time::timeout(Duration::from_secs(5), call).await.expect("call completes").unwrap();
    assert!(response.is_ok(), "the in-flight call succeeds: {response:?}");
    let served = tokio::time::timeout(Duration::from_secs(5), running.server).await.expect("server stops");
    assert!(served.unwrap().is_ok());
}
